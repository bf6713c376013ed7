"""qanalysis: will INT8 hurt my model?"""

"""Bundled sample models (spec files) for qanalysis."""

SAMPLES = ("digits_cnn", "digits_resnet", "digits_vit", "diabetes_mlp", "tiny_lm")

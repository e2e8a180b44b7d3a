"""Data layer: the dataset folder, preprocessing, splits, augmentation and torch Datasets."""

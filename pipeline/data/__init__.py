"""The data stages: download, split, prepare, and the tf.data input pipelines."""

# The two classes, in label order: 0 = cat, 1 = dog (the sigmoid output is P(dog)).
CLASSES = ("cat", "dog")

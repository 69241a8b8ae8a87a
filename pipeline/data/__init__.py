"""The data stages (download, split, prepare), the decoding of images and the tf.data input
pipeline. Imports core only."""

# The two classes, in label order: 0 = cat, 1 = dog (the sigmoid output is P(dog)).
CLASSES = ("cat", "dog")

"""The data stages (download, split, prepare), the decoding of images and the input
pipelines (tf.data on TensorFlow, a Keras PyDataset elsewhere). Imports core only."""

# The two classes, in label order: 0 = cat, 1 = dog (the sigmoid output is P(dog)).
CLASSES = ("cat", "dog")

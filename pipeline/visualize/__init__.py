"""What the convnets learn (the book's section 5.4): Grad-CAM heatmaps, the worst mistakes,
intermediate activations and filter patterns of each trained model. stage.py is the stage;
each other module has one job (anatomy: taking a model apart; gradients: differentiating it on
TensorFlow or JAX; figures: drawing)."""

"""Training: the loss of one batch and the jitted step (grows with the training issue)."""

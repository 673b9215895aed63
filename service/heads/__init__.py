"""Task heads attached to the live backbone: linear classifiers on the serving embedding,
answered from the same forward pass (the result cache holds the embedding; heads apply
after it)."""

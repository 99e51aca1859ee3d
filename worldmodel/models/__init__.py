"""Plain nn.Module models: the video ViT encoder, rotary embeddings, predictor, probe heads."""

"""Reinforcement-learning algorithms: pure tensor functions and the training loop."""

"""RL algorithms for RLlib's new API stack that Ray no longer ships."""

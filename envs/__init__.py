"""Environments of the STPN paper (maze, Atari, MuJoCo), installed as `rllib_stpn.envs`."""

"""Synchronous advantage actor-critic (A2C) for RLlib's new API stack.

Ray 2.60 no longer ships A2C, and the STPN paper's Pong and maze runs use it. Each iteration
samples one rollout of ``rollout_fragment_length`` steps from every env of every EnvRunner,
computes advantages with (generalised) n-step returns, and takes exactly ONE gradient step on
the whole batch (no epochs, no minibatches, no importance ratio, no clipping of the objective):

    loss = -mean(log pi(a|s) * A) + vf_loss_coeff * mean((V(s) - R)^2) - entropy_coeff * H

The loss lives in :mod:`rllib_stpn.algorithms.a2c_learner`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import TYPE_CHECKING, Any

import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)
from ray.rllib.utils.schedules.scheduler import Scheduler

from rllib_stpn.state_storage.pipelines import (
    install_env_to_module,
    install_learner,
    install_module_to_env,
)

if TYPE_CHECKING:
    from typing import Self  # Python >= 3.11; annotations are strings here (no runtime use)

    from ray.rllib.core.learner.learner import Learner


def _is_number(value: Any) -> bool:
    """A real, finite number (NaN or infinity would train to NaN weights without an error)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _as_dict(model_config: Any) -> dict[str, Any]:
    """A model_config as a dict (RLlib also takes a DefaultModelConfig dataclass, or None)."""
    if dataclasses.is_dataclass(model_config):
        return dataclasses.asdict(model_config)
    return dict(model_config or {})


class A2CConfig(AlgorithmConfig):
    """Configuration of :class:`A2C` (new API stack, torch only).

    The train batch of one iteration is ``rollout_fragment_length x num_envs_per_env_runner x
    max(1, num_env_runners)`` env steps (with ``rollout_fragment_length="auto"`` it is derived
    from ``train_batch_size_per_learner`` as in PPO; with ``batch_mode="complete_episodes"`` each
    env contributes whole episodes instead).

    Classic n-step A2C (the paper's Pong setting)::

        config = (
            A2CConfig()
            .environment("CartPole-v1")
            .env_runners(num_envs_per_env_runner=16, rollout_fragment_length=20)
            .training(lr=[[0, 7e-4], [200_000_000, 1e-11]], grad_clip=40.0,
                      vf_loss_coeff=0.5, entropy_coeff=0.01)
        )

    Whole-episode Monte-Carlo returns without bootstrapping (the paper's maze setting): sample
    complete episodes and switch the bootstrap at truncation off, so that
    ``A_t = sum_k gamma^k r_{t+k} - V(s_t)`` up to the end of the (truncated) episode::

        config = (
            A2CConfig()
            .env_runners(num_envs_per_env_runner=512, batch_mode="complete_episodes")
            .training(gamma=0.9, lambda_=1.0, bootstrap_truncated=False,
                      vf_loss_coeff=0.1, entropy_coeff=0.03, lr=1e-4, grad_clip=4.0)
        )
    """

    # Its pipeline builders below install the compact-state pieces themselves (read by
    # `rllib_stpn.compact_states`, which then leaves the config as it is).
    compact_states_built_in = True

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or A2C)

        # Common settings overridden with A2C defaults.
        self.lr = 7e-4
        self.gamma = 0.99
        self.grad_clip = 40.0
        self.grad_clip_by = "global_norm"
        self.rollout_fragment_length = 20
        self.num_envs_per_env_runner = 8
        self.num_env_runners = 0

        # A2C specific settings.
        self.use_critic = True
        self.lambda_ = 1.0
        self.vf_loss_coeff = 0.5
        self.entropy_coeff = 0.01
        self.bootstrap_truncated = True
        self.standardize_advantages = False
        # The STPN authors' maze loss options (rllib_stpn.algorithms.a2c_loss).
        self.exploration_loss = "entropy"
        self.loss_reduction = "mean"
        self.adam_epsilon = 1e-8  # torch's default; the authors' maze code uses 1e-4
        # torch threads of the learners and env runners (`thread_counts`).
        self.torch_threads: str | int | None = "auto"

    @override(AlgorithmConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        if self.framework_str != "torch":
            raise ValueError(f"A2C supports framework='torch' only, got {self.framework_str!r}")
        # PPO's default module is a plain actor-critic (policy + value head, optional LSTM);
        # nothing in it is PPO specific.
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
            DefaultPPOTorchRLModule,
        )

        return RLModuleSpec(module_class=DefaultPPOTorchRLModule)

    @override(AlgorithmConfig)
    def get_default_learner_class(self) -> type[Learner] | str:
        if self.framework_str != "torch":
            raise ValueError(f"A2C supports framework='torch' only, got {self.framework_str!r}")
        from rllib_stpn.algorithms.a2c_learner import A2CTorchLearner

        return A2CTorchLearner

    # The connector pipelines are RLlib's defaults with a few of A2C's own pieces (this config's
    # builders, as IMPALA's does): large recurrent states (the STPN's synaptic memory F) are
    # stored once per training sequence instead of once per step (`rllib_stpn.state_storage`),
    # and the learner's rows take each chunk's artificial bootstrap step into its last row.

    @override(AlgorithmConfig)
    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        if self.add_default_connectors_to_env_to_module_pipeline:
            install_env_to_module(pipeline)
        return pipeline

    @override(AlgorithmConfig)
    def build_module_to_env_connector(self, env=None, spaces=None):
        pipeline = super().build_module_to_env_connector(env=env, spaces=spaces)
        if self.add_default_connectors_to_module_to_env_pipeline:
            # A2C's learner rows never start after a chunk's last step: its state stays here.
            install_module_to_env(pipeline, ship_last=False)
        return pipeline

    @override(AlgorithmConfig)
    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        from rllib_stpn.algorithms.a2c_learner import A2CTrainingRows, bootstrap_row_starts

        pipeline = super().build_learner_connector(
            input_observation_space, input_action_space, device
        )
        if self.add_default_connectors_to_learner_pipeline:
            # One artificial step per episode chunk gives the bootstrap value V(s_T) in the same
            # batched forward pass as all other values (it is masked out of the loss).
            pipeline.prepend(AddOneTsToEpisodesAndTruncate())
            pipeline.insert_after(AddTimeDimToBatchAndZeroPad, A2CTrainingRows())
            pipeline.remove(AddTimeDimToBatchAndZeroPad)
            install_learner(pipeline, row_starts=bootstrap_row_starts)
        return pipeline

    @override(AlgorithmConfig)
    def training(
        self,
        *,
        use_critic: bool | None = NotProvided,
        lambda_: float | None = NotProvided,
        vf_loss_coeff: float | None = NotProvided,
        entropy_coeff: float | list[list[float]] | None = NotProvided,
        bootstrap_truncated: bool | None = NotProvided,
        standardize_advantages: bool | None = NotProvided,
        exploration_loss: str | None = NotProvided,
        loss_reduction: str | None = NotProvided,
        adam_epsilon: float | None = NotProvided,
        torch_threads: str | int | None = NotProvided,
        **kwargs: Any,
    ) -> Self:
        """Sets the training settings (plus everything ``AlgorithmConfig.training`` takes).

        Args:
            use_critic: Learn a value function and use it as baseline and for bootstrapping.
                If False, advantages are the plain discounted returns (REINFORCE-style), no
                value loss is computed, and nothing is bootstrapped.
            lambda_: GAE lambda in [0, 1]. 1.0 (default) gives classic A2C advantages: the
                n-step return up to the end of the rollout, bootstrapped with V there, minus
                V(s_t). Smaller values trade variance for bias (lambda_=0 is one-step TD).
            vf_loss_coeff: Weight (>= 0) of the squared value error ``(V(s) - R)^2``.
            entropy_coeff: Weight (>= 0) of the entropy bonus, or a schedule in RLlib's list
                form ``[[timestep, value], ...]`` (linearly interpolated, first timestep 0).
            bootstrap_truncated: If True (default), a rollout that ends without termination
                (rollout cut or env truncation) is bootstrapped with V of its last
                observation. If False, the return is the discounted sum of the rewards of the
                rollout alone (Monte-Carlo); with ``batch_mode="complete_episodes"`` this is
                the whole-episode return of the paper's maze runs.
            standardize_advantages: Normalise advantages to zero mean / unit std over the
                batch before the policy-gradient term (off by default: textbook A2C).
            exploration_loss: "entropy" (default): the term ``-entropy_coeff * H(pi)``;
                "sum_squared_probs": a penalty ``+entropy_coeff * sum_a pi(a|s)^2`` (the STPN
                authors' maze code; Discrete actions only).
            loss_reduction: How the per-step loss terms are reduced: "mean" (default) over
                all steps of the batch (also the authors' maze code); "sum" over all steps
                (RLlib's old A2C, the authors' Pong run); "sum_per_episode": summed over each
                episode chunk's steps and averaged over chunks. grad_clip bounds the gradient
                of the reduced loss.
            adam_epsilon: Adam's epsilon (> 0; default 1e-8, torch's; the authors' maze code
                uses 1e-4).
            torch_threads: torch's intra-op threads in the learners and env runners. "auto"
                (default): A2C's sampling and update never overlap, so each phase may use the
                CPUs the whole trial reserved (main process, env runners, learners), split
                among the processes of that phase and capped at the machine's CPU count (see
                `thread_counts`); an int >= 1: that many everywhere; None: Ray's setting (one
                thread per CPU assigned to the process).
            **kwargs: Forwarded to ``AlgorithmConfig.training`` (lr or lr schedule, gamma,
                grad_clip, grad_clip_by, train_batch_size_per_learner, ...).

        Returns:
            This updated config.
        """
        super().training(**kwargs)
        if use_critic is not NotProvided:
            self.use_critic = use_critic
        if lambda_ is not NotProvided:
            self.lambda_ = lambda_
        if vf_loss_coeff is not NotProvided:
            self.vf_loss_coeff = vf_loss_coeff
        if entropy_coeff is not NotProvided:
            self.entropy_coeff = entropy_coeff
        if bootstrap_truncated is not NotProvided:
            self.bootstrap_truncated = bootstrap_truncated
        if standardize_advantages is not NotProvided:
            self.standardize_advantages = standardize_advantages
        if exploration_loss is not NotProvided:
            self.exploration_loss = exploration_loss
        if loss_reduction is not NotProvided:
            self.loss_reduction = loss_reduction
        if adam_epsilon is not NotProvided:
            self.adam_epsilon = adam_epsilon
        if torch_threads is not NotProvided:
            self.torch_threads = torch_threads
        return self

    def thread_counts(self) -> tuple[int, int] | None:
        """(threads per learner, threads per env runner), or None to leave Ray's setting.

        With "auto": the trial reserves ``num_cpus_for_main_process + num_env_runners x
        num_cpus_per_env_runner + num_learners x num_cpus_per_learner`` CPUs. While the learners
        update, the env runners and the main process wait for the new weights, and while the env
        runners sample the learners wait for the episodes; so the learners share the reservation
        during the update and the env runners share it during sampling, each capped at this
        machine's CPU count. Pong with 1 env runner and 1 learner on 2 cores: (2, 2).
        """
        if self.torch_threads is None:
            return None
        if self.torch_threads != "auto":
            return self.torch_threads, self.torch_threads
        per_learner = self.num_cpus_per_learner if _is_number(self.num_cpus_per_learner) else 1
        reserved = (
            self.num_cpus_for_main_process
            + self.num_env_runners * self.num_cpus_per_env_runner
            + self.num_learners * per_learner
        )
        machine = os.cpu_count() or 1

        def share(processes: int) -> int:
            return int(max(1, min(machine, reserved // max(1, processes))))

        return share(self.num_learners), share(self.num_env_runners)

    @override(AlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        if not self._validate_config:
            return
        self._validate_a2c_settings()

    def _validate_a2c_settings(self) -> None:
        """Raises a one-line ValueError for the first bad A2C setting."""
        if not (self.enable_rl_module_and_learner and self.enable_env_runner_and_connector_v2):
            raise ValueError("A2C runs on RLlib's new API stack only; do not disable it")
        spec = self._rl_module_spec
        if getattr(getattr(spec, "module_class", None), "shares_value_layers", False):
            from rllib_stpn.model_config import check_vf_share_layers

            # The user's own settings: model_config() has A2C's injected False in it.
            check_vf_share_layers({**_as_dict(self._model_config), **_as_dict(spec.model_config)})
        for name in ("use_critic", "bootstrap_truncated", "standardize_advantages"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if not _is_number(self.lambda_) or not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"`lambda_` must be a number in [0, 1], got {self.lambda_!r}")
        if not _is_number(self.gamma) or not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"`gamma` must be a number in [0, 1], got {self.gamma!r}")
        if not _is_number(self.vf_loss_coeff) or self.vf_loss_coeff < 0.0:
            raise ValueError(f"`vf_loss_coeff` must be a number >= 0, got {self.vf_loss_coeff!r}")
        self._validate_schedule("entropy_coeff", self.entropy_coeff, allow_zero=True)
        self._validate_schedule("lr", self.lr, allow_zero=False)
        if self.grad_clip is not None and (not _is_number(self.grad_clip) or self.grad_clip <= 0):
            raise ValueError(f"`grad_clip` must be None or a number > 0, got {self.grad_clip!r}")
        self._validate_loss_options()
        if not self.use_critic and self.lambda_ != 1.0:
            raise ValueError(
                f"`lambda_`={self.lambda_} needs a value function; set use_critic=True or "
                "lambda_=1.0"
            )
        rfl = self.rollout_fragment_length
        if rfl != "auto" and (not isinstance(rfl, int) or isinstance(rfl, bool) or rfl < 1):
            raise ValueError(
                f"`rollout_fragment_length` must be 'auto' or an int >= 1, got {rfl!r}"
            )
        if self.num_epochs != 1:
            raise ValueError(
                f"A2C takes exactly one gradient step per iteration: `num_epochs` must be 1, "
                f"got {self.num_epochs!r}"
            )
        if self.minibatch_size is not None:
            raise ValueError(
                "A2C updates on the whole batch: `minibatch_size` must be None, got "
                f"{self.minibatch_size!r}"
            )
        envs = self.num_envs_per_env_runner * max(1, self.num_env_runners)
        if self.num_learners > 1 and envs < self.num_learners:
            raise ValueError(
                f"A2C gives each of its {self.num_learners} learners whole episodes: sample "
                f"from at least as many envs in total, got {envs} "
                "(num_envs_per_env_runner x max(1, num_env_runners))"
            )
        # An explicitly given train batch size must agree with the rollout size; otherwise it
        # is only used to derive `rollout_fragment_length="auto"`.
        if self._train_batch_size_per_learner is not None and self.batch_mode != (
            "complete_episodes"
        ):
            self.validate_train_batch_size_vs_rollout_fragment_length()

    def _validate_loss_options(self) -> None:
        from rllib_stpn.algorithms.a2c_loss import EXPLORATION_LOSSES, LOSS_REDUCTIONS

        if self.exploration_loss not in EXPLORATION_LOSSES:
            raise ValueError(
                f"`exploration_loss` must be one of {', '.join(EXPLORATION_LOSSES)}, got "
                f"{self.exploration_loss!r}"
            )
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"`loss_reduction` must be one of {', '.join(LOSS_REDUCTIONS)}, got "
                f"{self.loss_reduction!r}"
            )
        if not _is_number(self.adam_epsilon) or self.adam_epsilon <= 0:
            raise ValueError(f"`adam_epsilon` must be a number > 0, got {self.adam_epsilon!r}")
        threads = self.torch_threads
        if not (
            threads is None
            or threads == "auto"
            or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)
        ):
            raise ValueError(
                f"`torch_threads` must be 'auto', None or an int >= 1, got {threads!r}"
            )

    @staticmethod
    def _validate_schedule(name: str, value: Any, *, allow_zero: bool) -> None:
        bound = ">= 0" if allow_zero else "> 0"

        def bad(v: Any) -> bool:
            return not _is_number(v) or v < 0 or (v == 0 and not allow_zero)

        if isinstance(value, (list, tuple)):
            # Scheduler.validate checks the [[timestep, value], ...] structure.
            Scheduler.validate(fixed_value_or_schedule=value, setting_name=name, description=name)
            if any(bad(entry[1]) for entry in value):
                raise ValueError(f"`{name}` schedule values must be numbers {bound}, got {value!r}")
        elif bad(value):
            raise ValueError(
                f"`{name}` must be a number {bound} or a [[timestep, value], ...] schedule, got "
                f"{value!r}"
            )

    @property
    @override(AlgorithmConfig)
    def _model_config_auto_includes(self) -> dict[str, Any]:
        return super()._model_config_auto_includes | {"vf_share_layers": False}


class A2C(Algorithm):
    """Synchronous advantage actor-critic: one rollout, one gradient step per iteration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # RLlib resolves config.env ("stpn/Maze-v0") against Tune's registry right here and in the
        # env runners this process starts (a Tune trial's process too): register first.
        import rllib_stpn

        rllib_stpn.register()
        super().__init__(*args, **kwargs)

    @classmethod
    @override(Algorithm)
    def get_default_config(cls) -> A2CConfig:
        return A2CConfig()

    @override(Algorithm)
    def setup(self, config: A2CConfig) -> None:
        super().setup(config)
        counts = self.config.thread_counts()
        if counts is None:
            return
        learner_threads, runner_threads = counts
        # Processes of one phase share the trial's CPUs (see A2CConfig.thread_counts).
        if self.config.num_learners > 0:
            self.learner_group.foreach_learner(lambda _learner: _set_threads(learner_threads))
        if self.config.num_env_runners > 0:
            self.env_runner_group.foreach_env_runner(
                lambda _runner: _set_threads(runner_threads), local_env_runner=False
            )
        # This process runs every phase that has no remote processes.
        here = [
            threads
            for threads, remote in (
                (learner_threads, self.config.num_learners),
                (runner_threads, self.config.num_env_runners),
            )
            if remote == 0
        ]
        if here:
            _set_threads(max(here))

    @override(Algorithm)
    def training_step(self) -> None:
        # One synchronous rollout round: each EnvRunner's `sample()` returns
        # rollout_fragment_length steps from each of its envs (or one episode per env in
        # "complete_episodes" mode).
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            if not episodes:
                return
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)

        # Exactly one gradient step on the whole batch (advantages and value targets are
        # computed in the loss, see A2CTorchLearner.compute_loss_for_module).
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self._update_learners(
                episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                        default=0,
                    ),
                },
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        # A2C is on-policy: the next rollout must use the new weights.
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            modules_to_update = set(learner_results[0].keys()) - {ALL_MODULES}
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=modules_to_update,
                inference_only=True,
            )

    def _update_learners(self, episodes: list, timesteps: dict[str, Any]) -> list[dict]:
        """One gradient step on ``episodes``; with several learners each gets whole episodes.

        RLlib's own sharding cuts episodes to equalise the shards, which breaks A2C: the first
        piece ends without a done flag (so a Monte-Carlo return stops at the cut) and a piece
        loses the episode's ``custom_data`` (where the compact STPN states live). Every
        learner must take part in the step (DDP all-reduces the gradients), so each shard is a
        non-empty list of whole episodes, balanced by steps.
        """
        num_learners = self.config.num_learners
        if num_learners <= 1:
            # No minibatch arguments at all: RLlib then runs exactly one step on the batch.
            return self.learner_group.update(episodes=episodes, timesteps=timesteps, num_epochs=1)
        shards = shard_whole_episodes(episodes, num_learners)
        return self.learner_group.update(
            episodes_refs=[ray.put(shard) for shard in shards],
            timesteps=timesteps,
            num_epochs=1,
        )


def _set_threads(n: int) -> int:
    import torch

    torch.set_num_threads(n)
    return n


def shard_whole_episodes(episodes: list, num_shards: int) -> list[list]:
    """``episodes`` split into ``num_shards`` non-empty lists of whole episodes.

    Greedy by length (longest first onto the shard with the fewest steps), so the step counts
    are as even as whole episodes allow; equal when e.g. every episode has the same length and
    the count divides evenly.
    """
    if len(episodes) < num_shards:
        raise ValueError(
            f"A2C got {len(episodes)} episode chunks for {num_shards} learners; every learner "
            "needs at least one (sample from at least as many envs in total as learners)"
        )
    shards: list[list] = [[] for _ in range(num_shards)]
    steps = [0] * num_shards
    for episode in sorted(episodes, key=len, reverse=True):
        i = steps.index(min(steps))
        shards[i].append(episode)
        steps[i] += len(episode)
    return shards


_REGISTERED = False


def register_a2c() -> None:
    """Registers :class:`A2C` with Tune as "A2C" (once per process; further calls are no-ops).

    Afterwards ``tune.Tuner("A2C", ...)``, ``tune.run("A2C", ...)`` and YAML ``run: A2C``
    resolve to this implementation.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from ray.tune.registry import register_trainable

    register_trainable("A2C", A2C)
    _REGISTERED = True

"""Torch Learner of :class:`rllib_stpn.algorithms.A2C` and its advantage connector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.utils.annotations import override
from ray.rllib.utils.lambda_defaultdict import LambdaDefaultDict
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.postprocessing.zero_padding import split_and_zero_pad_n_episodes
from ray.rllib.utils.schedules.scheduler import Scheduler
from ray.rllib.utils.torch_utils import explained_variance

if TYPE_CHECKING:
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
    from ray.rllib.utils.typing import EpisodeType, ModuleID, TensorType

    from rllib_stpn.algorithms.a2c import A2CConfig

VF_EXPLAINED_VAR_KEY = "vf_explained_var"
CURR_ENTROPY_COEFF_KEY = "curr_entropy_coeff"
ADVANTAGE_MEAN_KEY = "advantage_mean"
# Batch column (bool) of the slots that hold a real or phantom step (False: zero padding).
STEP_MASK = "a2c_step_mask"


def compute_a2c_value_targets(
    values: np.ndarray,
    rewards: np.ndarray,
    terminateds: np.ndarray,
    truncateds: np.ndarray,
    *,
    gamma: float,
    lambda_: float,
    bootstrap_truncated: bool,
) -> np.ndarray:
    """Returns GAE(lambda_) value targets (advantage = target - value) for a flat batch.

    The layout is RLlib's ``AddOneTsToEpisodesAndTruncate`` one: episodes (chunks) are
    concatenated and each ends with one phantom step whose value is V of the chunk's last
    observation; the last real step carries ``terminated`` (no bootstrap) or ``truncated``
    (chunk boundary). With ``bootstrap_truncated=False`` a truncated chunk is treated like a
    terminated one, i.e. its return is the discounted reward sum of the chunk alone.
    Targets at phantom steps are meaningless (they are masked out of the loss).
    """
    values = np.asarray(values, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    terminateds = np.asarray(terminateds, dtype=np.float64)
    truncateds = np.asarray(truncateds, dtype=np.float64)
    # Whether V(s_{t+1}) enters the one-step target of step t.
    if bootstrap_truncated:
        bootstrap = 1.0 - terminateds
    else:
        bootstrap = (1.0 - terminateds) * (1.0 - truncateds)
    # Whether the recursion may carry advantage t+1 into t (never across chunk ends).
    propagate = (1.0 - terminateds) * (1.0 - truncateds)
    next_values = np.append(values[1:], 0.0)
    deltas = rewards + gamma * bootstrap * next_values - values
    advantages = np.empty_like(deltas)
    running = 0.0
    decay = gamma * lambda_
    for t in range(len(deltas) - 1, -1, -1):
        running = deltas[t] + decay * propagate[t] * running
        advantages[t] = running
    return (advantages + values).astype(np.float32)


class A2CStepMask(ConnectorV2):
    """Learner connector piece marking which batch slots hold (real or phantom) steps.

    Runs last in the learner pipeline, after ``AddOneTsToEpisodesAndTruncate`` appended one
    phantom step per episode chunk and (for stateful modules) the batch was split into
    zero-padded ``max_seq_len`` rows. The loss uses the mask to flatten values, rewards and
    done flags back into episode order and to compute the advantages from the values of its
    own forward pass: A2C takes one gradient step per batch, so these are exactly the current
    values and a separate value pass (as PPO's GAE connector does) would be pure overhead.
    """

    @override(ConnectorV2)
    def __call__(
        self,
        *,
        rl_module: MultiRLModule,
        episodes: list[EpisodeType],
        batch: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        sa_episodes = list(
            self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False)
        )
        for module_id, module_batch in batch.items():
            module = rl_module[module_id]
            # Lengths include the phantom bootstrap step of each chunk.
            episode_lens = [len(e) for e in sa_episodes if e.module_id in (None, module_id)]
            mask = np.ones(sum(episode_lens), dtype=np.float32)
            if module.is_stateful():
                max_seq_len = module.model_config["max_seq_len"]
                mask = np.stack(split_and_zero_pad_n_episodes(mask, episode_lens, max_seq_len))
            device = module_batch[Columns.REWARDS].device
            module_batch[STEP_MASK] = torch.from_numpy(mask).to(device) > 0
        return batch


class A2CTorchLearner(TorchLearner):
    """Computes the A2C loss; one call of ``update`` is one gradient step on the batch."""

    @override(TorchLearner)
    def build(self) -> None:
        super().build()
        self.entropy_coeff_schedulers_per_module: dict[ModuleID, Scheduler] = LambdaDefaultDict(
            lambda module_id: Scheduler(
                fixed_value_or_schedule=self.config.get_config_for_module(module_id).entropy_coeff,
                framework=self.framework,
                device=self._device,
            )
        )
        if (
            self._learner_connector is not None
            and self.config.add_default_connectors_to_learner_pipeline
        ):
            # One phantom step per episode chunk gives the bootstrap value V(s_T) in the same
            # batched forward pass as all other values (it is masked out of the loss).
            self._learner_connector.prepend(AddOneTsToEpisodesAndTruncate())
            self._learner_connector.append(A2CStepMask())

    @override(TorchLearner)
    def remove_module(self, module_id: ModuleID, **kwargs: Any) -> Any:
        spec = super().remove_module(module_id, **kwargs)
        self.entropy_coeff_schedulers_per_module.pop(module_id, None)
        return spec

    @classmethod
    @override(TorchLearner)
    def rl_module_required_apis(cls) -> list[type]:
        return [ValueFunctionAPI]

    def _advantages_and_targets(
        self, config: A2CConfig, batch: dict[str, Any], values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages and value targets (no gradient), shaped like ``values``."""
        steps = batch[STEP_MASK]  # real + phantom steps, without zero padding

        def flat(x: torch.Tensor) -> np.ndarray:
            return x[steps].detach().to("cpu", torch.float64).numpy()

        v = flat(values)
        targets = compute_a2c_value_targets(
            v,
            flat(batch[Columns.REWARDS]),
            flat(batch[Columns.TERMINATEDS]),
            flat(batch[Columns.TRUNCATEDS]),
            gamma=config.gamma,
            lambda_=config.lambda_,
            bootstrap_truncated=config.bootstrap_truncated,
        )
        advantages = targets - v
        real = flat(batch[Columns.LOSS_MASK]) > 0
        advantages[~real] = 0.0  # phantom steps: never in the loss nor in the statistics
        if config.standardize_advantages:
            mean, std = advantages[real].mean(), advantages[real].std()
            advantages = np.where(real, (advantages - mean) / max(std, 1e-4), 0.0)

        def unflat(x: np.ndarray) -> torch.Tensor:
            out = torch.zeros_like(values, dtype=torch.float32)
            out[steps] = torch.from_numpy(x.astype(np.float32)).to(values.device)
            return out

        return unflat(advantages), unflat(targets)

    @override(TorchLearner)
    def compute_loss_for_module(
        self,
        *,
        module_id: ModuleID,
        config: A2CConfig,
        batch: dict[str, Any],
        fwd_out: dict[str, TensorType],
    ) -> TensorType:
        module = self.module[module_id].unwrapped()
        # The loss mask removes the phantom bootstrap steps and, for stateful modules, the
        # zero padding of the max_seq_len rows.
        mask = batch[Columns.LOSS_MASK].bool()
        num_valid = mask.sum()

        def masked_mean(x: torch.Tensor) -> torch.Tensor:
            return x[mask].sum() / num_valid

        if config.use_critic:
            values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        else:
            values = torch.zeros(mask.shape, device=mask.device)
        advantages, targets = self._advantages_and_targets(config, batch, values)

        action_dist = module.get_train_action_dist_cls().from_logits(
            fwd_out[Columns.ACTION_DIST_INPUTS]
        )
        logp = action_dist.logp(batch[Columns.ACTIONS])
        policy_loss = -masked_mean(logp * advantages)
        mean_entropy = masked_mean(action_dist.entropy())
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total_loss = policy_loss - entropy_coeff * mean_entropy
        if config.use_critic:
            vf_loss = masked_mean((values - targets) ** 2)
            total_loss = total_loss + config.vf_loss_coeff * vf_loss
            explained_var = explained_variance(targets[mask], values[mask].detach())
        else:
            vf_loss = explained_var = torch.zeros((), device=logp.device)

        self.metrics.log_dict(
            {
                POLICY_LOSS_KEY: policy_loss,
                VF_LOSS_KEY: vf_loss,
                ENTROPY_KEY: mean_entropy,
                VF_EXPLAINED_VAR_KEY: explained_var,
                ADVANTAGE_MEAN_KEY: masked_mean(advantages),
            },
            key=module_id,
            window=1,
        )
        return total_loss

    @override(TorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self.module.keys():
            coeff = self.entropy_coeff_schedulers_per_module[module_id].update(
                timestep=timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0)
            )
            self.metrics.log_value((module_id, CURR_ENTROPY_COEFF_KEY), coeff, window=1)

"""Torch Learner of :class:`rllib_stpn.algorithms.A2C` and its advantage connector."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import tree
from ray.rllib.connectors.common import AddTimeDimToBatchAndZeroPad
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.utils.annotations import override
from ray.rllib.utils.lambda_defaultdict import LambdaDefaultDict
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.postprocessing.value_predictions import compute_value_targets
from ray.rllib.utils.schedules.scheduler import Scheduler
from ray.rllib.utils.spaces.space_utils import batch as batch_fn
from ray.rllib.utils.torch_utils import explained_variance

from rllib_stpn.state_storage.container import single_module

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig  # here an A2CConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
    from ray.rllib.utils.typing import EpisodeType, ModuleID, TensorType

VF_EXPLAINED_VAR_KEY = "vf_explained_var"
CURR_ENTROPY_COEFF_KEY = "curr_entropy_coeff"
ADVANTAGE_MEAN_KEY = "advantage_mean"


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
    """GAE(lambda_) value targets (advantage = target - value) for a flat batch, float32.

    RLlib's ``compute_value_targets`` on the ``AddOneTsToEpisodesAndTruncate`` layout: chunks
    concatenated, each ending with one phantom step whose value is V of the chunk's last
    observation (its target is meaningless and masked out of the loss). The one step around
    it is A2C's ``bootstrap_truncated=False``: a truncated chunk is then treated like a
    terminated one, so its return is the discounted reward sum of the chunk alone.
    """
    if not bootstrap_truncated:
        terminateds = np.maximum(terminateds, truncateds)
    return compute_value_targets(
        values=values,
        rewards=rewards,
        terminateds=terminateds,
        truncateds=truncateds,
        gamma=gamma,
        lambda_=lambda_,
    )


def bootstrap_row_starts(length: int, max_seq_len: int) -> range:
    """Where A2C's training rows start in a chunk of `length` steps (the last one artificial).

    Rows start every `max_seq_len` steps, and the artificial bootstrap step joins the chunk's
    last row (which may then hold max_seq_len + 1 steps) instead of opening a row of its own,
    as RLlib's layout does when the chunk length is a multiple of max_seq_len: for the paper's
    Pong setting (50-step rollouts, max_seq_len 50) that halves the rows the learner runs.
    """
    return range(0, max(length - 1, 1), max_seq_len)


def _row_bounds(length: int, max_seq_len: int) -> list[tuple[int, int]]:
    starts = list(bootstrap_row_starts(length, max_seq_len))
    return list(zip(starts, [*starts[1:], length]))


def _padded(a: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((width, *a.shape[1:]), dtype=a.dtype)
    out[: len(a)] = a
    return out


class A2CTrainingRows(AddTimeDimToBatchAndZeroPad):
    """Learner piece: splits each chunk into zero-padded rows of max_seq_len + 1 slots.

    Replaces RLlib's AddTimeDimToBatchAndZeroPad in A2C's learner pipeline (the rows of
    `bootstrap_row_starts`, which `AddSynapticStatesToBatch` gives states for). Adds SEQ_LENS
    (the steps of each row, the artificial one included), which the module uses to skip the
    padding, and which the loss uses to find the slots that hold steps.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "as_learner_connector": True})

    @override(AddTimeDimToBatchAndZeroPad)
    def __call__(
        self,
        *,
        rl_module: MultiRLModule,
        batch: dict[str, Any],
        episodes: list[EpisodeType],
        explore: bool | None = None,
        shared_data: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        if rl_module is None or not rl_module.is_stateful() or Columns.STATE_IN in batch:
            return batch
        for column, column_data in batch.items():
            if column == Columns.INFOS:
                continue
            for key, items in column_data.items():
                module_id = key[2] if len(key) == 3 else None
                if module_id is not None and not rl_module[module_id].is_stateful():
                    continue
                max_seq_len = self._get_max_seq_len(rl_module, module_id=module_id)
                steps = batch_fn(items, individual_items_already_have_batch_dim="auto")
                length = len(tree.flatten(steps)[0])
                width = max_seq_len + 1
                column_data[key] = [
                    tree.map_structure(lambda a, s=s, e=e, w=width: _padded(a[s:e], w), steps)
                    for s, e in _row_bounds(length, max_seq_len)
                ]
                shared_data[f"_zero_padded_for_mid={module_id or DEFAULT_MODULE_ID}"] = True
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            module = single_module(rl_module, episode)
            if not module.is_stateful():
                continue
            max_seq_len = module.model_config["max_seq_len"]
            bounds = _row_bounds(len(episode), max_seq_len)
            seq_lens = [e - s for s, e in bounds]
            self.add_n_batch_items(
                batch, Columns.SEQ_LENS, seq_lens, len(seq_lens), single_agent_episode=episode
            )
            if not shared_data.get("_added_loss_mask_for_valid_episode_ts"):
                mask = [np.arange(max_seq_len + 1) < n for n in seq_lens]
                self.add_n_batch_items(
                    batch, Columns.LOSS_MASK, mask, len(mask), single_agent_episode=episode
                )
        return batch


def step_mask(batch: dict[str, Any], values: torch.Tensor) -> torch.Tensor:
    """The slots of `values` that hold a step, real or artificial (False: zero padding)."""
    if values.dim() == 2 and Columns.SEQ_LENS in batch:
        seq_lens = batch[Columns.SEQ_LENS].to(values.device)
        return torch.arange(values.shape[1], device=values.device) < seq_lens.unsqueeze(1)
    return torch.ones_like(values, dtype=torch.bool)


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
        self, config: AlgorithmConfig, batch: dict[str, Any], values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages and value targets (no gradient), shaped like ``values``."""
        steps = step_mask(batch, values)  # real + phantom steps, without zero padding

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
        config: AlgorithmConfig,
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

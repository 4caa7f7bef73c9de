"""``SAM2DiffusionPolicy``: LeRobot's Diffusion Policy with SAM 2 as the vision backbone.

Built directly (no ResNet is ever constructed): a ``MultiCameraEncoder`` (SAM 2 trunk shared by
all cameras, one pooling head per camera, state vectors appended) turns ``n_obs_steps``
observations into the global condition of a 1-D conditional UNet (LeRobot's
``DiffusionConditionalUnet1d``), which denoises an action sequence with a diffusers DDPM / DDIM
scheduler, as in LeRobot's ``diffusion`` policy.

Checkpoints are self-contained: ``model.safetensors`` holds the SAM 2 weights next to the heads
and the UNet, and :meth:`SAM2DiffusionPolicy.from_pretrained` builds the model without reading
``sam2_checkpoint`` (no SAM 2 file, no network) and loads every weight strictly.
"""

import builtins
import warnings
from collections import deque
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.utils import populate_queues
from lerobot.utils.constants import ACTION
from torch import Tensor

from ..camera_encoder import MultiCameraEncoder
from ..object_tracking import TrackerModules
from ..obs_tracker import ObsTracker
from ..policy_memory import memory_key
from .batch_inputs import is_window, masks_tracked, stack_steps
from .configuration_sam2_diffusion import SAM2DiffusionConfig
from .denoiser import build_denoiser, diffusion_loss, sample_actions
from .memory_history import check_episode_lengths, episode_lengths

__all__ = ["MOVED_PREFIXES", "SAM2DiffusionPolicy", "migrate_state_dict"]

MOVED_PREFIXES = {"tracker.": "encoder.tracker."}
"""State-dict key prefixes that moved (old -> new): the tracker's weights are the encoder's since the
policy uses the encoder's object tracker. :func:`migrate_state_dict` renames them on every load."""


def migrate_state_dict(state: MutableMapping[str, Tensor], prefix: str = "") -> MutableMapping[str, Tensor]:
    """Rename, in place, the keys of an older ``model.safetensors`` (:data:`MOVED_PREFIXES`); returns ``state``.

    Args:
        state: A policy state dict (keys under ``prefix``).
        prefix: Where the policy's keys start (``load_state_dict`` passes it).
    """
    for old, new in MOVED_PREFIXES.items():
        for key in [k for k in state if k.startswith(prefix + old)]:
            state[prefix + new + key[len(prefix + old) :]] = state.pop(key)
    return state


def _migrate_on_load(module: torch.nn.Module, state: MutableMapping[str, Tensor], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: old keys renamed before they are matched (strict loads keep working)."""
    migrate_state_dict(state, prefix)


T = TypeVar("T", bound="SAM2DiffusionPolicy")


class SAM2DiffusionPolicy(PreTrainedPolicy):
    """Diffusion Policy whose cameras are encoded by SAM 2 (LeRobot policy type ``sam2_diffusion``).

    Args:
        config: The policy configuration, with input / output features filled in (LeRobot's
            ``make_policy`` does this from the dataset or environment).
        load_sam2_checkpoint: Read ``config.sam2_checkpoint`` (building from scratch). ``False``
            builds SAM 2 with seeded random weights that the caller then overwrites from a
            saved state dict (:meth:`from_pretrained` does this).
        **kwargs: LeRobot's factory passes ``dataset_stats`` (ignored: normalisation lives in the
            processors) and ``dataset_meta`` (with ``feature_cache``: the cache must be this dataset's).

    Shapes (``B`` batch, ``To`` = ``n_obs_steps``, ``A`` action size):
        ``forward(batch)``: cameras ``(B, To, 3, H, W)`` float in [0, 1], ``observation.state``
        ``(B, To, S)``, ``action`` ``(B, horizon, A)``, ``action_is_pad`` ``(B, horizon)`` ->
        scalar loss. ``select_action(obs)``: cameras ``(B, 3, H, W)``, state ``(B, S)`` -> ``(B, A)``.
        With object tokens, each ``object_masks`` feature is ``(B, To, K, H, W)`` in training and
        ``(B, K, H, W)`` (or absent: the policy tracks, see ``object_prompts``) in ``select_action``.
    """

    config_class = SAM2DiffusionConfig
    name = "sam2_diffusion"

    def __init__(self, config: SAM2DiffusionConfig, *, load_sam2_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.camera_keys = list(config.image_features)
        self.mask_keys = {camera: config.object_masks[camera] for camera in sorted(config.object_masks)}
        self.low_dim_keys = config.low_dim_keys  # observation.state and ENV features; masks are never state
        self.obs_keys = self.camera_keys + self.low_dim_keys
        self.input_keys = self.obs_keys + list(self.mask_keys.values())  # what the denoiser's condition reads
        # the encoder's object tracker (object tokens, frozen trunk, see encoder_config): its weights are in
        # model.safetensors
        with warnings.catch_warnings():
            if not load_sam2_checkpoint:  # random weights on purpose: model.safetensors replaces them
                warnings.filterwarnings("ignore", message=r".*has no checkpoint.*")
            self.encoder = MultiCameraEncoder(
                cameras={key: tuple(config.image_features[key].shape) for key in self.camera_keys},
                low_dim={key: tuple(config.input_features[key].shape) for key in self.low_dim_keys},
                config=config.encoder_config(load_checkpoint=load_sam2_checkpoint),
            )
        self.register_load_state_dict_pre_hook(_migrate_on_load)  # old model.safetensors: tracker.* keys
        # memory="sam2": training batches hold each window frame's bank frames (observation_delta_indices)
        self.memory_layout = config.memory_layout()
        objects = config.memory_source == "objects"
        self.bank_keys = self.camera_keys + (list(self.mask_keys.values()) if objects else [])
        if self.memory_layout.has_memory and config.memory_keep_first and kwargs.get("dataset_meta") is not None:
            check_episode_lengths(episode_lengths(kwargs["dataset_meta"]))
        self.cached_cameras = None  # feature_cache: opened for training (make_policy passes dataset_meta)
        if config.feature_cache is not None and kwargs.get("dataset_meta") is not None:
            self.cached_cameras = self._open_cache(kwargs["dataset_meta"])
        self.obs_feature_dim = self.encoder.output_shape()[0]
        self.global_cond_dim = self.obs_feature_dim * config.n_obs_steps
        self.unet, self.noise_scheduler = build_denoiser(config, self.global_cond_dim)
        self.num_inference_steps = config.num_inference_steps or config.num_train_timesteps
        self._queues: dict[str, deque] = {}
        self._tracking: bool | None = None
        self.reset()

    # ----------------------------------------------------------------------------------------
    # LeRobot API
    # ----------------------------------------------------------------------------------------

    def get_optim_params(self) -> list[dict[str, Any]]:
        """Trainable parameters only, as optimizer groups.

        Returns:
            ``[{"params": UNet + pooling heads}, {"params": trainable SAM 2 weights, "lr":
            optimizer_lr * trunk_lr_scale}]``; the first group takes the optimizer's lr, the
            trunk group is present only when SAM 2 is fine-tuned (``freeze=False``).
        """
        groups = self.encoder.param_groups(self.config.optimizer_lr, self.config.optimizer_weight_decay)
        heads = [g for g in groups if g["name"] != "trunk"]
        trunk = [g for g in groups if g["name"] == "trunk"]
        main = [p for p in self.unet.parameters() if p.requires_grad]
        main += [p for g in heads for p in g["params"]]
        out: list[dict[str, Any]] = [{"params": main, "name": "policy"}]
        for group in trunk:
            out.append({"params": group["params"], "lr": group["lr"], "name": "sam2_trunk"})
        return out

    @property
    def tracker(self) -> TrackerModules | None:
        """The object tracker's SAM 2 weights (the encoder's: ``encoder.tracker.*``), or ``None``."""
        return self.encoder.tracker

    @property
    def object_tracker(self) -> ObsTracker | None:
        """The encoder's object tracker (streams per batch row), or ``None`` without one."""
        return self.encoder.obs_tracker

    def reset(self) -> None:
        """Start a new episode: clear the queues, the encoder's remembered frames, object streams and memory banks.

        Object prompts (``object_prompts`` or :meth:`set_object_prompts`) are kept: the next frame
        of every row is prompted with them.
        """
        n_obs, n_act = self.config.n_obs_steps, self.config.n_action_steps
        self._queues = {key: deque(maxlen=n_obs) for key in self.input_keys}
        self._queues[ACTION] = deque(maxlen=n_act)
        self._new_frame = False  # whether the newest queued observation is still to enter the memory banks
        self.encoder.reset_objects()  # the frame memo and the object streams
        self._tracking = None

    def supports_rtc(self) -> bool:
        """``False``: no Real-Time Chunking (``lerobot-rollout --inference.type=rtc`` refuses the policy).

        RTC guides each new chunk toward the unexecuted rest of the previous one
        (``predict_action_chunk(..., inference_delay=, prev_chunk_left_over=)``) inside a
        flow-matching sampler; this policy's DDPM / DDIM sampler has no such guidance, and
        ignoring those arguments would claim a behaviour it does not have. Use the sync backend
        or async inference.
        """
        return False

    def set_object_prompts(self, prompts: dict[str, Any], row: int | None = None) -> None:
        """Set the object prompts of the policy's tracker at run time (a person's clicks, a detector).

        The next :meth:`select_action` starts new object streams from them (for ``row`` only, or
        every row), prompted on that step's frames; :meth:`reset` keeps them for later episodes.

        Args:
            prompts: ``{camera: {obj_id: {"points": [[x, y], ...], "labels": [1, ...]} |
                {"box": [x0, y0, x1, y1]}}}`` in camera pixels, ``num_objects`` ids for every camera
                of ``object_masks``.
            row: A batch row (one environment / robot of several), or ``None`` for all rows.

        Raises:
            ValueError: Without object tokens, without a tracker (``freeze=False``), or for prompts
                that do not fit the cameras (camera pixels, inside the centre crop the encoder sees).
        """
        self._require_tracker("set_object_prompts")
        try:
            self.encoder.set_object_prompts(prompts, row=row)
        except ValueError as e:
            raise ValueError(f"sam2_diffusion.set_object_prompts: {e}") from e

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, None]:
        """Diffusion training loss on a batch of LeRobot samples.

        Args:
            batch: Cameras ``(B, To, 3, H, W)`` (or ``(B, 3, H, W)`` when ``To == 1``), low-dim
                ``(B, To, S)``, ``action`` ``(B, horizon, A)`` and ``action_is_pad`` ``(B, horizon)``.

        Returns:
            ``(loss, None)``: the mean squared error of the noise (or sample) prediction.
        """
        for key in (ACTION, "action_is_pad"):
            if key not in batch:
                raise KeyError(f"sam2_diffusion.forward: batch is missing {key!r}; got keys {sorted(batch)}")
        cached = self.config.feature_cache is not None  # cached cameras: features, not frames
        if cached and (self.training or not all(key in batch for key in self.camera_keys)):  # or the cache's view
            batch = (self.cached_cameras or self._open_cache(None)).substitute(batch)
        obs = self._stack_steps(batch, training=True)
        actions = batch[ACTION]
        if actions.dim() != 3 or actions.shape[1] != self.config.horizon:
            raise ValueError(
                f"sam2_diffusion.forward: batch['action'] has shape {tuple(actions.shape)}; expected "
                f"(B, horizon={self.config.horizon}, {self.config.action_feature.shape[0]})"
            )
        cond = self._global_cond(obs)
        return diffusion_loss(self.unet, self.noise_scheduler, self.config, actions, cond, batch["action_is_pad"]), None

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """The next ``n_action_steps`` actions, from the latest observation or from a window of them.

        One observation (cameras ``(B, 3, H, W)``, what LeRobot's async policy server sends at each
        request) is queued as :meth:`select_action` queues it (the first of an episode repeated
        ``n_obs_steps`` times) and the queued window is used: successive calls keep their history
        and the encoder's frame reuse, :meth:`reset` starts a new episode, and the actions equal
        those :meth:`select_action` returns on the same observations. An observation already
        queued (the same tensors: :meth:`select_action` queues before it predicts) is not queued
        again. A window (cameras ``(B, n_obs_steps, 3, H, W)``, offline) is used as given; the
        queues are left alone.

        Args:
            batch: One observation (cameras ``(B, 3, H, W)``, low-dim ``(B, S)``) or a window
                (``(B, To, ...)`` inputs).
            noise: Optional initial noise ``(B, horizon, A)``.

        Returns:
            ``(B, n_action_steps, A)`` normalised actions.
        """
        if self._is_window(batch):
            return self._generate(self._stack_steps(batch), noise)
        if not self._is_queued(batch):
            self._observe(batch, "predict_action_chunk")
        self._memory_step()
        return self._generate(self._queued(), noise)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], noise: Tensor | None = None) -> Tensor:
        """One action per control step, from a queue refilled every ``n_action_steps`` steps.

        The last ``n_obs_steps`` observations are queued (the first one repeated at the start of an
        episode). With ``reuse_frames``, the encoder only encodes frames it has not encoded in
        the previous prediction.

        Args:
            batch: Cameras ``(B, 3, H, W)`` float in [0, 1], low-dim ``(B, S)`` (normalised by
                the preprocessor).
            noise: Optional initial noise for a prediction made at this step.

        Returns:
            ``(B, A)`` normalised action.
        """
        tracking = self._observe(batch, "select_action")
        if (tracking or self.memory_layout.has_memory) and self._queues[ACTION]:
            self._memory_step()
            self.encoder(self._queued())  # no prediction at this step: the tracker / memory bank still takes the frame
        if not self._queues[ACTION]:
            actions = self.predict_action_chunk(batch, noise=noise)  # on the window just queued
            self._queues[ACTION].extend(actions.transpose(0, 1))
        return self._queues[ACTION].popleft()

    @classmethod
    def from_pretrained(
        cls: builtins.type[T],
        pretrained_name_or_path: str | Path,
        *,
        config: PreTrainedConfig | None = None,
        force_download: bool = False,
        resume_download: bool | None = None,
        proxies: dict | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        strict: bool = True,
        **kwargs: Any,
    ) -> T:
        """Reload a saved policy from ``model.safetensors``, strictly, without the SAM 2 checkpoint.

        Same arguments as LeRobot's ``PreTrainedPolicy.from_pretrained``, except that ``strict``
        defaults to ``True`` (every key present, none extra). SAM 2 is built with placeholder
        weights (``sam2_checkpoint`` is not read) and filled from the saved state dict.
        """
        hub = {
            "force_download": force_download,
            "resume_download": resume_download,
            "proxies": proxies,
            "token": token,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "revision": revision,
        }
        if config is None:
            config = PreTrainedConfig.from_pretrained(pretrained_name_or_path, **hub)
        if not isinstance(config, SAM2DiffusionConfig):
            raise TypeError(
                f"{pretrained_name_or_path} holds a {type(config).__name__} ({config.type!r}), not sam2_diffusion"
            )
        kwargs["load_sam2_checkpoint"] = False
        return super().from_pretrained(pretrained_name_or_path, config=config, strict=strict, **hub, **kwargs)

    # ----------------------------------------------------------------------------------------
    # internals
    # ----------------------------------------------------------------------------------------

    def _stack_steps(self, batch: dict[str, Tensor], training: bool = False) -> dict[str, Tensor]:
        """``{key: (B, To, *shape)}`` for every observation key and object-mask key, checked.

        With memory, ``batch`` holds one frame per ``observation_delta_indices`` entry: the window is
        taken from it, and each window frame's bank frames go to ``memory_key(key)`` ``(B, To, F, ...)``.
        """
        memory = self.memory_layout
        if memory.has_memory:
            batch = memory.split(batch, self.input_keys, self.bank_keys)
        shapes = {key: self.config.input_features[key].shape for key in self.input_keys}
        obs = stack_steps(batch, self.input_keys, self.mask_keys, shapes, self.config.n_obs_steps, training)
        obs.update({memory_key(key): batch[memory_key(key)] for key in self.bank_keys if memory.has_memory})
        return obs

    def _open_cache(self, meta: Any) -> Any:
        """The ``feature_cache`` checked against this policy's encoder (and the dataset, given its ``meta``)."""
        from .feature_cache import CachedCameras  # zarr only when a cache is used

        self.cached_cameras = CachedCameras(
            self.config.feature_cache, self.encoder, self.config.observation_delta_indices, meta
        )
        return self.cached_cameras

    def _require_tracker(self, what: str) -> ObsTracker:
        """The encoder's object tracker, or one clear error saying why there is none."""
        if not self.mask_keys:
            raise ValueError(
                f"sam2_diffusion.{what}: this policy has no object tokens (object_masks is empty), so nothing to track"
            )
        try:
            self.config.check_tracking()
        except ValueError as e:
            raise ValueError(f"sam2_diffusion.{what}: {e}") from e
        assert self.encoder.obs_tracker is not None
        return self.encoder.obs_tracker

    def _tracks(self, batch: dict[str, Tensor], what: str = "select_action") -> bool:
        """Whether this step's masks come from the policy's tracker (the batch has none) or the batch."""
        tracking = masks_tracked(batch, self.mask_keys, what)
        if self._tracking is not None and tracking != self._tracking:
            raise ValueError(
                f"sam2_diffusion.{what}: object masks "
                + ("stopped" if tracking else "started")
                + " coming with the batch mid-episode; call policy.reset() between episodes"
            )
        self._tracking = tracking
        return tracking

    def _observe(self, batch: dict[str, Tensor], what: str) -> bool:
        """Queue one observation (the first of an episode fills the window); whether the tracker makes the masks."""
        missing = [key for key in self.obs_keys if key not in batch]
        if missing:
            raise KeyError(f"sam2_diffusion.{what}: missing {missing}; got keys {sorted(batch)}")
        tracking = self._tracks(batch, what)  # no masks in the batch: the encoder's tracker makes them
        if tracking:
            self._require_tracker(what)
        self._queues = populate_queues(self._queues, {key: batch[key] for key in batch if key in self.input_keys})
        self._new_frame = True  # the next encoder call on the queue is this control step's (memory banks)
        return tracking

    def _memory_step(self) -> None:
        """Tell the encoder's memory whether its next call (on the queued window) is a new control step.

        Each queued observation is one step of the banks, also when it equals the previous one (a
        robot at rest); calling again on the same queue is not.
        """
        if self.memory_layout.has_memory:
            self.encoder.memory_step(self._new_frame)
            self._new_frame = False

    def _is_window(self, batch: dict[str, Tensor]) -> bool:
        """Whether ``batch`` holds ``(B, To, ...)`` windows (offline) rather than one observation ``(B, ...)``."""
        return is_window(batch, self.obs_keys, {key: self.config.input_features[key].shape for key in self.obs_keys})

    def _is_queued(self, batch: dict[str, Tensor]) -> bool:
        """Whether the newest queued observation is ``batch`` itself (the same tensors)."""
        return all(key in batch and self._queues[key] and self._queues[key][-1] is batch[key] for key in self.obs_keys)

    def _queued(self) -> dict[str, Tensor]:
        """``{key: (B, n_obs_steps, *shape)}``: the queued observations (and masks, unless the policy tracks)."""
        return {key: torch.stack(list(self._queues[key]), dim=1) for key in self.input_keys if self._queues[key]}

    def _global_cond(self, obs: dict[str, Tensor]) -> Tensor:
        """``(B, To * D)``: every camera and step through SAM 2 in one pass, per-step features concatenated."""
        return self.encoder(obs).flatten(start_dim=1)

    def _generate(self, obs: dict[str, Tensor], noise: Tensor | None) -> Tensor:
        cond = self._global_cond(obs)
        return sample_actions(self.unet, self.noise_scheduler, self.config, cond, self.num_inference_steps, noise)

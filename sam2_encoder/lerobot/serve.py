r"""``python -m sam2_encoder.lerobot.serve``: LeRobot's own async policy server, serving ``sam2_diffusion``.

LeRobot's policy server (``lerobot.async_inference.policy_server``) refuses every policy type not
listed in ``lerobot.async_inference.constants.SUPPORTED_POLICIES`` and imports no third-party
plugin. This entry point imports the installed plugins (LeRobot's ``register_third_party_plugins``:
``lerobot_policy_sam2``, robot plugins), adds ``sam2_diffusion`` to that list at run time (the
server checks that very list object), then runs LeRobot's ``serve()`` unchanged, with the same
command-line options (``--host``, ``--port``, ``--fps``, ``--inference_latency``,
``--obs_queue_timeout``). No LeRobot code is copied and no LeRobot file is changed.

The stock client then connects with ``--policy_type=sam2_diffusion``::

    python -m sam2_encoder.lerobot.serve --host=127.0.0.1 --port=8080
    python -m lerobot.async_inference.robot_client --robot.type=pusht_sim --server_address=127.0.0.1:8080 \
        --policy_type=sam2_diffusion --pretrained_name_or_path=OUT/checkpoints/last/pretrained_model \
        --policy_device=cpu --actions_per_chunk=8 --fps=10

Needs LeRobot's ``async`` extra (grpcio): ``pip install "./integration/lerobot[async]"``.
"""

from __future__ import annotations

__all__ = ["POLICY_TYPE", "allow_in_policy_server", "main"]

POLICY_TYPE = "sam2_diffusion"


def allow_in_policy_server(policy_type: str = POLICY_TYPE) -> list[str]:
    """Add ``policy_type`` to the policy types LeRobot's policy server accepts (once; in this process).

    Args:
        policy_type: A registered LeRobot policy type.

    Returns:
        The server's list of accepted policy types, now holding ``policy_type``.

    Raises:
        ImportError: Without grpcio (LeRobot's ``async`` extra), naming the install command.
        RuntimeError: When the server does not read the constants' list (another LeRobot version).
    """
    try:
        from lerobot.async_inference import constants, policy_server
    except ImportError as e:
        raise ImportError(
            f"sam2_encoder.lerobot.serve: LeRobot's async inference cannot be imported ({e}); it needs LeRobot's "
            "async extra (grpcio): pip install './integration/lerobot[async]' or pip install 'lerobot[async]'"
        ) from e
    if policy_server.SUPPORTED_POLICIES is not constants.SUPPORTED_POLICIES:
        raise RuntimeError(
            "sam2_encoder.lerobot.serve: lerobot.async_inference.policy_server.SUPPORTED_POLICIES is not the list "
            "of lerobot.async_inference.constants; this LeRobot version checks policy types elsewhere (tested: 0.6.1)"
        )
    if policy_type not in constants.SUPPORTED_POLICIES:
        constants.SUPPORTED_POLICIES.append(policy_type)
    return constants.SUPPORTED_POLICIES


def main() -> None:
    """Start LeRobot's policy server with the plugins imported and ``sam2_diffusion`` accepted (reads ``sys.argv``)."""
    from lerobot.utils.import_utils import register_third_party_plugins

    from . import SAM2DiffusionConfig  # noqa: F401  (registers sam2_diffusion even without the plugin installed)

    register_third_party_plugins()
    allow_in_policy_server()
    from lerobot.async_inference.policy_server import serve

    serve()


if __name__ == "__main__":
    main()

"""LeRobot plugin: registers the ``pusht_sim`` robot type (gym-pusht as a robot, no hardware).

LeRobot's ``lerobot-rollout``, ``lerobot-record`` and the async ``robot_client`` import every
installed distribution named ``lerobot_robot_*`` at start; importing this module registers
:class:`PushTSimConfig` as ``--robot.type=pusht_sim``, and LeRobot's ``make_robot_from_config``
finds :class:`PushTSim` next to it (the config's class name without ``Config``).
"""

from .config_pusht_sim import PushTSimConfig
from .pusht_sim import PushTSim

__all__ = ["PushTSim", "PushTSimConfig"]

"""``PushTSimConfig``: the options of the ``pusht_sim`` robot (``--robot.<field>=...`` on LeRobot's CLIs)."""

from dataclasses import dataclass

from lerobot.robots.config import RobotConfig


@RobotConfig.register_subclass("pusht_sim")
@dataclass(kw_only=True)
class PushTSimConfig(RobotConfig):
    """The gym-pusht simulator as a LeRobot robot.

    Attributes:
        camera: Name of the one camera (the sim's render): observation key ``observation.images.<camera>``.
        width: Render width in pixels.
        height: Render height in pixels.
        seed: Seed of the first episode (episode ``k`` uses ``seed + k``); ``None``: unseeded.
        episode_length: Actions per episode: after that many (or when the block is on the target) the
            robot logs the episode's result and starts the next one.
    """

    camera: str = "top"
    width: int = 96
    height: int = 96
    seed: int | None = 0
    episode_length: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("width", "height", "episode_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"pusht_sim: --robot.{name}={value!r}; expected a positive integer")
        if not self.camera or "." in self.camera:
            raise ValueError(f"pusht_sim: --robot.camera={self.camera!r}; expected a non-empty name without '.'")

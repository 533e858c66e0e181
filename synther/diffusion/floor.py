"""Lift synthetic locomotion states out of the floor (post-processing with the public robot model).

DP fine-tuning keeps each column's marginal but blurs how they go together, and on MuJoCo locomotion that puts the
body into the ground: on the HalfCheetah stand-in (issue 14) 39 % of the ε = 10 samples' states (44 % at ε = 1)
have a limb more than 2 cm below the floor, against 1.7 % of the real rows and 2 % of the public ones (MuJoCo's
soft contacts allow a little). Neither the simulator nor a dynamics model fitted on public data knows what follows
such a state: those rows carry most of the relabelled s′'s error. The robot's geometry is a public fact (the
environment's model), and so is how deep the public data's contacts go; raising the root's height (obs[0] = qpos[1]
for HalfCheetah, Hopper and Walker2d) until the deepest contact is no deeper than the public data's 1st percentile
is post-processing of the samples with public information: no privacy cost.
"""
import numpy as np

from synther.errors import UserError

LOCOMOTION_ENVS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5")  # obs = (qpos[1:], qvel); obs[0] is the root's height
PUBLIC_QUANTILE = 0.01  # the depth allowed: this quantile of the public data's deepest-contact distances


class FloorModel:
    """The environment's MuJoCo model, to measure how far a state's body lies below the floor."""

    def __init__(self, env_id: str) -> None:
        if env_id not in LOCOMOTION_ENVS:
            raise UserError(f"floor 'public' needs a MuJoCo locomotion environment ({', '.join(LOCOMOTION_ENVS)}); "
                            f"the data's environment is {env_id or 'not recorded'}")
        import gymnasium as gym
        import mujoco

        self._mujoco, self.env_id = mujoco, env_id
        env = gym.make(env_id).unwrapped
        self.model, self.data = env.model, env.data
        self.nq = self.model.nq
        planes = [g for g in range(self.model.ngeom) if self.model.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE]
        if not planes:
            raise UserError(f"{env_id}: its model has no floor plane")
        self.planes = set(planes)

    def depth(self, obs: np.ndarray) -> np.ndarray:
        """Per row, the signed distance of the deepest body-floor contact (negative: below the floor; +inf: none)."""
        obs = np.asarray(obs, dtype=np.float64)
        out = np.full(len(obs), np.inf)
        qpos = np.zeros(self.nq)
        for i, row in enumerate(obs):
            qpos[1:] = row[: self.nq - 1]  # the root's x is not observed and does not move the body up or down
            self.data.qpos[:] = qpos
            self._mujoco.mj_kinematics(self.model, self.data)
            self._mujoco.mj_collision(self.model, self.data)
            for c in self.data.contact[: self.data.ncon]:
                if c.geom1 in self.planes or c.geom2 in self.planes:
                    out[i] = min(out[i], c.dist)
        return out

    def allowed_depth(self, public_obs: np.ndarray) -> float:
        """The public data's PUBLIC_QUANTILE of deepest-contact distances (a public fact)."""
        return float(np.quantile(self.depth(public_obs), PUBLIC_QUANTILE))

    def lift(self, obs: np.ndarray, allowed: float) -> tuple[np.ndarray, np.ndarray]:
        """`obs` with the root raised where the body lies deeper than `allowed`, and the lift per row. The floor is
        flat and level, so raising the root by h moves every contact's distance by h."""
        lift = np.maximum(allowed - self.depth(obs), 0.0)
        lifted = np.array(obs, dtype=np.float64, copy=True)
        lifted[:, 0] += lift
        return lifted.astype(np.asarray(obs).dtype), lift

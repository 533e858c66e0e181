"""What produced an artifact: package versions recorded in side-cars."""
import importlib.metadata as md
import platform

PACKAGES = ("numpy", "torch", "gymnasium", "gymnasium-robotics", "mujoco", "stable-baselines3", "opacus")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out

"""CORL-style offline RL agents trained on real or synthetic transitions, scored in the real simulator.

    td3_bc.py, iql.py, cql.py, awac.py, edac.py   one file per algorithm: its networks, update rule and config
    data.py        training data: the real dataset, a samples.npz, or a diffusion checkpoint via the generator API
    buffer.py      the tensor replay buffer and the statistics it normalizes with
    evaluation.py  episodes in the dataset's registered env -> D4RL-normalized scores
    trainer.py     AgentConfig, the one training loop, run folders, eval.jsonl / summary.json, skip and resume
    networks.py    MLPs, the batched critic ensemble, soft target updates, the Agent interface

>>> from synther.agents import get_algorithm
>>> agent_class, config_class = get_algorithm("iql")
>>> from synther.agents.trainer import train
>>> summary = train(config_class(dataset="ptr-maze2d-umaze-dense-v0", max_timesteps=10_000), agent_class)
"""
import importlib

from synther.errors import UserError

# name -> (module, agent class, config class)
ALGORITHMS = {
    "td3_bc": ("synther.agents.td3_bc", "TD3BC", "TD3BCConfig"),
    "iql": ("synther.agents.iql", "IQL", "IQLConfig"),
    "cql": ("synther.agents.cql", "CQL", "CQLConfig"),
    "awac": ("synther.agents.awac", "AWAC", "AWACConfig"),
    "edac": ("synther.agents.edac", "EDAC", "EDACConfig"),
}


def get_algorithm(name: str) -> tuple[type, type]:
    """(agent class, config class) of an algorithm name."""
    try:
        module, agent, config = ALGORITHMS[name]
    except KeyError:
        raise UserError(f"unknown algorithm '{name}' (choose from: {', '.join(ALGORITHMS)})") from None
    mod = importlib.import_module(module)
    return getattr(mod, agent), getattr(mod, config)


__all__ = ["ALGORITHMS", "get_algorithm"]

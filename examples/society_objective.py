"""The bundled simulated LLM API as a plain Python objective, for
examples/society.yaml (the society needs the host loop: python or http objectives).

One call is one noisy request to the simulator (convergence_jax.optimize.simulated):
its noise-free metrics plus the simulator's quality noise (+- 0.05).
"""

import jax
import numpy as np

from convergence_jax.optimize.simulated import MODELS, simulated_llm_mean

_rng = np.random.default_rng()
_mean = jax.jit(simulated_llm_mean)  # one small program, compiled on the first call


def evaluate(config: dict) -> dict:
    params = {
        "temperature": np.array([config["temperature"]], np.float32),
        "top_p": np.array([config["top_p"]], np.float32),
        "model": np.array([list(MODELS).index(config["model"])]),
        "max_tokens": np.array([config["max_tokens"]], np.float32),
    }
    metrics = {k: float(v[0]) for k, v in _mean(params).items()}
    noisy = metrics["quality"] + 0.05 * _rng.normal()
    metrics["quality"] = float(np.clip(noisy, 0.0, 1.0))
    return metrics

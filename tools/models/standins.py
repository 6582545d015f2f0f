"""Stand-in modules so that `tensorflowjs` imports without jax, tensorflow_hub and
tensorflow_decision_forests.

tensorflowjs 4.22 imports those three at load time for converters we never use (JAX, TF-Hub,
decision forests). We only need its graph-model weight reader, so empty modules are enough and
spare the model venv several hundred MB and their version pins against TensorFlow 2.21.
"""

from __future__ import annotations

import sys
import types

_NAMES = (
    "jax",
    "jax.experimental",
    "jax.experimental.jax2tf",
    "jax.numpy",
    "tensorflow_decision_forests",
    "tensorflow_hub",
)


def install() -> None:
    # Keras probes `import jax` when it loads; let it load first, while jax is really absent.
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    for name in _NAMES:
        if name in sys.modules:
            continue
        module = types.ModuleType(name)
        module.__dict__["__standin__"] = True
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)

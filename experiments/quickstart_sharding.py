import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxprune

# Fully sharded: each kernel split over the devices along its first axis.
mesh = jax.make_mesh((jax.device_count(),), ("fsdp",))
with jax.set_mesh(mesh):
  params = {"w": jax.device_put(jnp.ones((1024, 256)), NamedSharding(mesh, P("fsdp"))),
            "b": jnp.zeros(256)}
  tx = jaxprune.prune(optax.adam(1e-3), criterion=jaxprune.criteria.magnitude,
                      schedule=jaxprune.schedules.constant(0.9))
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(params, state, params)
  print(state.masks["w"].sharding.spec, float(jaxprune.sparsity(state.masks).global_sparsity))

import jax
import jax.numpy as jnp
import optax

import jaxprune

params = {"hidden": {"kernel": 0.3 * jax.random.normal(jax.random.key(0), (20, 64)),
                     "bias": jnp.zeros(64)},
          "out": {"kernel": 0.3 * jax.random.normal(jax.random.key(1), (64, 3)),
                  "bias": jnp.zeros(3)}}


def forward(params, x):
    h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def loss_fn(params, batch):  # the model in evaluation mode
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


x = jax.random.normal(jax.random.key(2), (256, 20))
batches = [(x, jnp.argmax(x[:, :3], axis=1))]

masks = jaxprune.snip_it(loss_fn, params, batches, sparsity=0.95)  # rounds 0.5 ... 0.95
print(jaxprune.connectivity(forward, params, masks, (20,)).disconnected)  # ()
tx = jaxprune.prune(optax.adam(1e-2), masks=masks)  # the masks never change
params = jaxprune.apply_masks(params, masks)
opt_state = tx.init(params)

# Structured: keep 25% of the hidden units, then remove the others.
nodes = jaxprune.snap_it(loss_fn, params, batches, sparsity=0.75,
                         layers=["hidden", "out"])
small = jaxprune.shrink(params, nodes, layers=["hidden", "out"])
print(small.widths)  # {'hidden': 16, 'out': 3}

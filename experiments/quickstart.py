import flax.linen as nn
import jax
import optax

import jaxprune


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


# A toy task: labels from a random linear teacher.
x = jax.random.normal(jax.random.key(0), (1024, 784))
y = (x @ jax.random.normal(jax.random.key(1), (784, 10))).argmax(axis=1)

model = MLP()
tx = jaxprune.prune(
    optax.adamw(1e-3),
    criterion=jaxprune.criteria.magnitude,
    schedule=jaxprune.schedules.polynomial(
        final_sparsity=0.9, begin_step=50, end_step=250, frequency=25
    ),
)
state = jaxprune.TrainState.create(
    apply_fn=model.apply, params=model.init(jax.random.key(2), x)["params"], tx=tx
)


@jax.jit
def train_step(state, x, y):
    def loss_fn(params):
        logits = state.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


for _ in range(300):
    state, loss = train_step(state, x, y)

accuracy = (model.apply({"params": state.params}, x).argmax(1) == y).mean()
report = jaxprune.sparsity(state.masks)
print(f"loss {loss:.3f}  train accuracy {accuracy:.3f}  "
      f"sparsity {report.global_sparsity:.3f}")
print(report)

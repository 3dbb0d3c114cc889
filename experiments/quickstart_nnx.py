import jax
import optax
from flax import nnx

import jaxprune


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden1 = nnx.Linear(784, 300, rngs=rngs)
        self.hidden2 = nnx.Linear(300, 100, rngs=rngs)
        self.out = nnx.Linear(100, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.hidden1(x))
        x = nnx.relu(self.hidden2(x))
        return self.out(x)


# A toy task: labels from a random linear teacher.
x = jax.random.normal(jax.random.key(0), (1024, 784))
y = (x @ jax.random.normal(jax.random.key(1), (784, 10))).argmax(axis=1)

model = MLP(nnx.Rngs(2))
tx = jaxprune.prune(
    optax.adamw(1e-3),
    criterion=jaxprune.criteria.magnitude,
    schedule=jaxprune.schedules.polynomial(
        final_sparsity=0.9, begin_step=50, end_step=250, frequency=25
    ),
    prunable=lambda path, leaf: path[-1] == "kernel",  # ('hidden1', 'kernel')
)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


for _ in range(300):
    loss = train_step(model, optimizer, x, y)

masks = jaxprune.masks_of(optimizer)  # {'hidden1': {'kernel': bool[...], 'bias': None}, ...}
print(f"loss {loss:.3f}  sparsity {jaxprune.sparsity(masks).global_sparsity:.3f}")
print(jaxprune.sparsity(model))  # the model's zeros, counted the same way

"""Solutions to the exercises of docs/tutorial.ipynb, one block per exercise cell.

Try each exercise before you read its block. A block starts at a line ``# %% exercise: NAME`` and replaces, whole,
the notebook's code cell whose metadata says ``"exercise": "NAME"``: ``python docs/make_tutorial.py --solved OUT``
writes a copy of the notebook with every block filled in, and tests/test_tutorial.py runs that copy. The blocks use
the notebook's names (``torch``, ``F``, ``Schedule``, ...), so this file is not meant to be run on its own.
"""

# %% exercise: schedule
def make_schedule(T):
    """Ho et al.'s linear schedule over T steps, both ends scaled by 1000/T, as a Schedule of float64 tensors."""
    betas = torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T, dtype=torch.float64)  # betas[t] is beta_{t+1}
    alphas = 1 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)                                      # alpha-bar_{t+1}
    return Schedule(betas, alphas, alphas_cumprod)


# %% exercise: q_sample
def q_sample(x0, t, eps, sched):
    """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (eq. 4) for a batch x0 of any shape (B, ...), with one
    code timestep t (int64, shape (B,)) and one noise eps (the shape of x0) per item."""
    abar = sched.alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...): broadcasts over the item
    return abar.sqrt().to(x0.dtype) * x0 + (1 - abar).sqrt().to(x0.dtype) * eps


# %% exercise: loss
def loss_simple(model, x0, t, eps, sched, labels=None):
    """L_simple (eq. 14): the mean squared error of the network's noise prediction at x_t = q_sample(x0, t, eps),
    averaged over the batch and the coordinates; the network is called as model(x_t, t), or model(x_t, t, labels)
    when labels are given."""
    x_t = q_sample(x0, t, eps, sched)
    prediction = model(x_t, t) if labels is None else model(x_t, t, labels)
    return F.mse_loss(prediction, eps)


# %% exercise: train
def train(model, x_data, sched, steps, batch=512, lr=2e-3, y_data=None, p_uncond=0.2, seed=0):
    """Algorithm 1 for `steps` steps of Adam on batches of `batch` rows of x_data, the learning rate decayed from lr
    to 0 along a cosine; with y_data, each label is replaced by "no class" (model.num_classes) with probability
    p_uncond. Every random draw comes from a generator seeded with `seed`. Returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    T = len(sched.betas)
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(x_data), (batch,), generator=generator)
        x0 = x_data[rows]
        t = torch.randint(0, T, (batch,), generator=generator)  # the paper's t ~ Uniform{1, ..., T}
        eps = torch.randn(x0.shape, generator=generator)
        labels = None
        if y_data is not None:
            dropped = torch.rand(batch, generator=generator) < p_uncond
            labels = torch.where(dropped, model.num_classes, y_data[rows])
        loss = loss_simple(model, x0, t, eps, sched, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
        losses.append(loss.item())
    return losses


# %% exercise: algorithm2
@torch.no_grad()
def algorithm2(model, x_T, sched, generator, clip=False):
    """Ancestral sampling (Algorithm 2, sigma_t^2 = beta_t) from x_T through all T steps; z is drawn from
    `generator` after each network call. With clip, x0-hat is clamped to [-1, 1] and eps recomputed from it."""
    betas, alphas, abar = sched
    x = x_T
    for t in reversed(range(len(betas))):  # the paper's t = T, ..., 1
        eps = model(x, torch.full((len(x),), t))
        if clip:
            x0_hat = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
            eps = (x - abar[t].sqrt() * x0_hat) / (1 - abar[t]).sqrt()
        x = (x - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:  # the paper's t > 1: no noise at the last step
            x = x + betas[t].sqrt() * torch.randn(x.shape, generator=generator)
    return x


# %% exercise: ddim
@torch.no_grad()
def ddim(model, x_T, sched, steps, clip=False):
    """DDIM with eta = 0 (Song et al. 2021, eq. 12) on `steps` code timesteps round(i (T - 1) / (steps - 1)),
    i = steps - 1, ..., 0; after the last, alpha-bar = 1. With clip, x0-hat is clamped to [-1, 1] and eps
    recomputed from it."""
    abar = sched.alphas_cumprod
    T = len(abar)
    ts = [round(i * (T - 1) / (steps - 1)) for i in reversed(range(steps))]
    x = x_T
    for i, t in enumerate(ts):
        abar_s = abar[ts[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
        eps = model(x, torch.full((len(x),), t))
        x0_hat = (x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
            eps = (x - abar[t].sqrt() * x0_hat) / (1 - abar[t]).sqrt()
        x = abar_s.sqrt() * x0_hat + (1 - abar_s).sqrt() * eps
    return x


# %% exercise: guided
def guided(model, labels, s):
    """Classifier-free guidance: a function (x_t, t) -> out(x_t, t, no class) + s (out(x_t, t, c) - out(x_t, t, no
    class)), c = labels (int64, shape (B,)) and "no class" = model.num_classes."""
    def guided_model(x, t):
        conditional = model(x, t, labels)
        unconditional = model(x, t, torch.full_like(labels, model.num_classes))
        return unconditional + s * (conditional - unconditional)
    return guided_model

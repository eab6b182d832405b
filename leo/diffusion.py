"""Gaussian diffusion: noise schedules, training loss and the DDPM / DDIM samplers.

Three parts, one class each:
- :class:`NoiseSchedule`: abar(t), the forward process q(x_t | x0) and the respaced timesteps;
- samplers (:class:`DDIMSampler`, :class:`DDPMSampler`) with a ``step()`` interface as
  diffusers' schedulers have: ``sampler.step(i, x_t, x0, eps, noise) -> x_prev``, their
  per-step coefficients named in :class:`StepCoefficients`;
- :class:`SamplingGraphs`: capture of the whole sampling loop as one CUDA graph, cached per
  shape/settings, and its replay.
:class:`GaussianDiffusion` ties them together (objective, training loss, guidance, ``sample``).

Model-agnostic: a denoiser is any callable ``model(x_t, t, cond) -> prediction`` where
``x_t`` has the sample's shape, ``t`` is a (B,) int64 tensor of training timesteps in
[0, num_steps) and ``cond`` is whatever the caller passes (``None`` = the null condition).
The prediction is the noise (``objective="eps"``) or the velocity
``v = sqrt(abar) * eps - sqrt(1 - abar) * x0`` (``objective="v"``).

Sampling draws all of its randomness up front from one seeded generator (the start
noise, then one noise tensor per step for the stochastic samplers), so the eager loop
and the CUDA-graph loop (which replays a captured loop over static noise buffers)
consume the same random numbers and give the same result for the same seed.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, NamedTuple

import torch

SCHEDULES = ("cosine", "linear")
OBJECTIVES = ("eps", "v")
SAMPLERS = ("ddim", "ddpm")


def cosine_alphas_cumprod(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
    through betas clipped at ``max_beta``. Entry i is abar at timestep i + 1 (float64)."""

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), dim=0)


def linear_alphas_cumprod(num_steps: int) -> torch.Tensor:
    """Ho et al.'s linear betas (1e-4 .. 0.02 at 1000 steps, rescaled for other step counts)."""
    scale = 1000.0 / num_steps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t (B,) -> (B, dim):
    [cos(t f_i), sin(t f_i)] with geometric frequencies f_i, zero-padded to an odd ``dim``.
    The one embedding of every denoiser (LMDM, first-frame model)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    emb = torch.cat((ang.cos(), ang.sin()), dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class NoiseSchedule:
    """Discrete-time noise schedule with ``num_steps`` training steps.

    ``alphas_cumprod[t]`` is abar for timestep t (0-based, float64 on CPU);
    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
    """

    def __init__(self, num_steps: int = 1000, schedule: str = "cosine"):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        _check_choice("schedule", schedule, SCHEDULES)
        self.num_steps, self.name = num_steps, schedule
        abar = cosine_alphas_cumprod(num_steps) if schedule == "cosine" else linear_alphas_cumprod(num_steps)
        self.alphas_cumprod = abar
        self.betas = 1 - abar / torch.cat((abar.new_ones(1), abar[:-1]))

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar[t] shaped (B, 1, 1, ...) to broadcast against ``like``."""
        a = self.alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def timesteps(self, steps: int) -> list[int]:
        """The descending training timesteps a sampler with ``steps`` steps visits (evenly spaced,
        always starting at the last one, num_steps - 1)."""
        if not isinstance(steps, int) or not 1 <= steps <= self.num_steps:
            raise ValueError(f"steps must be an int in [1, {self.num_steps}], got {steps!r}")
        ts = torch.linspace(self.num_steps - 1, 0, steps, dtype=torch.float64).round().long()
        return sorted(set(ts.tolist()), reverse=True)


class StepCoefficients(NamedTuple):
    """One sampler step: x_prev = c_x0 * x0 + c_eps * eps + c_xt * x_t + sigma * z, at training
    timestep ``t`` whose cumulative alpha is ``abar``. Python floats: CUDA-graph capture bakes them in."""

    t: int
    c_x0: float
    c_eps: float
    c_xt: float
    sigma: float
    abar: float


class Sampler:
    """A sampler over the respaced chain through ``schedule.timesteps(steps)`` (abar_prev = 1
    after the last step). ``plan[i]`` holds step i's :class:`StepCoefficients`; :meth:`step`
    advances x_t to x_prev from the model's (x0, eps) estimates."""

    name = ""

    def __init__(self, schedule: NoiseSchedule, steps: int, eta: float = 0.0):
        if not 0.0 <= eta:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule, self.eta = schedule, float(eta)
        self.timesteps = schedule.timesteps(steps)
        abar, ts = schedule.alphas_cumprod, self.timesteps
        self.plan = [
            self.coefficients(t, abar[t].item(), abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0)
            for i, t in enumerate(ts)
        ]

    def coefficients(self, t: int, a: float, ap: float) -> StepCoefficients:
        raise NotImplementedError

    @property
    def stochastic(self) -> bool:
        """Whether any step adds noise (then one noise tensor per step is drawn up front)."""
        return any(c.sigma > 0 for c in self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def step(self, i: int, x_t, x0, eps, noise=None):
        """x_prev of step ``i`` (``noise``: that step's standard normal draw, used when sigma > 0)."""
        return apply_step(self.plan[i], x_t, x0, eps, noise)


def apply_step(c: StepCoefficients, x_t, x0, eps, noise=None):
    """x_prev = c_x0 x0 (+ c_eps eps) (+ c_xt x_t) (+ sigma noise): zero terms are skipped."""
    nxt = c.c_x0 * x0
    if c.c_eps:
        nxt = nxt + c.c_eps * eps
    if c.c_xt:
        nxt = nxt + c.c_xt * x_t
    if c.sigma > 0:
        nxt = nxt + c.sigma * noise
    return nxt


class DDIMSampler(Sampler):
    """DDIM: x_prev = sqrt(ap) x0 + sqrt(1 - ap - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ap) / (1 - a)) sqrt(1 - a / ap) (eta 0: deterministic)."""

    name = "ddim"

    def coefficients(self, t, a, ap):
        sigma = self.eta * math.sqrt(max((1 - ap) / (1 - a) * (1 - a / ap), 0.0))
        c_eps = math.sqrt(max(1 - ap - sigma**2, 0.0))
        return StepCoefficients(t, math.sqrt(ap), c_eps, 0.0, sigma, a)


class DDPMSampler(Sampler):
    """Ancestral DDPM: the posterior q(x_prev | x_t, x0) mean and variance of the respaced chain
    (``eta`` is ignored)."""

    name = "ddpm"

    def coefficients(self, t, a, ap):
        beta = 1 - a / ap
        c_x0 = math.sqrt(ap) * beta / (1 - a)
        c_xt = math.sqrt(1 - beta) * (1 - ap) / (1 - a)
        sigma = math.sqrt(max(beta * (1 - ap) / (1 - a), 0.0))
        return StepCoefficients(t, c_x0, 0.0, c_xt, sigma, a)


SAMPLER_CLASSES = {"ddim": DDIMSampler, "ddpm": DDPMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, steps: int, eta: float = 0.0) -> Sampler:
    _check_choice("sampler", name, SAMPLERS)
    return SAMPLER_CLASSES[name](schedule, steps, eta)


class SamplingGraphs:
    """CUDA-graph capture of a whole sampling loop, cached per key (model, shape, dtype, device,
    sampler settings, condition shape...). ``loop(model, x_T, noise, plan=..., cond=..., t_vecs=...,
    **ctx)`` is the eager loop; captured once per key on static buffers, then replayed after
    ``draw(x_T, noise)`` refills the noise and the condition is copied in."""

    def __init__(self, loop: Callable):
        self.loop = loop
        self.entries: dict[tuple, Any] = {}

    def run(self, key, model, shape, dtype, device, n_noise, draw, ctx):
        entry = self.entries.get(key)
        if entry is None:
            entry = self.capture(model, shape, dtype, device, n_noise, ctx)
            self.entries[key] = entry
        draw(entry.x_T, entry.noise)
        if ctx["cond"] is not None:
            entry.cond.copy_(ctx["cond"])
        entry.graph.replay()
        # The output buffer is overwritten by the next replay: hand back a copy.
        return entry.out.clone()

    def capture(self, model, shape, dtype, device, n_noise, ctx):
        cond = ctx["cond"]
        B = shape[0]
        x_T = torch.zeros(shape, device=device, dtype=dtype)
        noise = torch.zeros((n_noise,) + shape, device=device, dtype=dtype)
        static_cond = None if cond is None else cond.detach().clone()
        t_vecs = [torch.full((B,), p[0], device=device, dtype=torch.long) for p in ctx["plan"]]
        loop_kw = dict(ctx, cond=static_cond, t_vecs=t_vecs)
        # Warm up on a side stream (lazy init, autotuning, cuDNN plans) before capturing.
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            warm_plan = ctx["plan"][:2]
            for _ in range(2):
                self.loop(model, x_T.clone(), noise, **dict(loop_kw, plan=warm_plan))
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = self.loop(model, x_T, noise, **loop_kw)
        return _GraphEntry(graph, x_T, noise, static_cond, out, t_vecs, model)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with ``num_steps`` training steps.

    ``alphas_cumprod[t]`` is abar for timestep t (0-based); x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
    """

    def __init__(self, num_steps: int = 1000, schedule: str = "cosine", objective: str = "eps"):
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("objective", objective, OBJECTIVES)
        self.noise_schedule = NoiseSchedule(num_steps, schedule)
        self.num_steps = num_steps
        self.schedule = schedule
        self.objective = objective
        self.alphas_cumprod = self.noise_schedule.alphas_cumprod  # float64, CPU
        self.betas = self.noise_schedule.betas
        # Captured sampling graphs (see _sample_graphed).
        self.graphs = SamplingGraphs(self._loop)

    @property
    def _graphs(self) -> dict:
        """key -> captured loop (the cache of :attr:`graphs`)."""
        return self.graphs.entries

    @property
    def config(self) -> dict:
        return {"num_steps": self.num_steps, "schedule": self.schedule, "objective": self.objective}

    def __repr__(self):
        return f"GaussianDiffusion(num_steps={self.num_steps}, schedule={self.schedule!r}, objective={self.objective!r})"

    # ------------------------------------------------------------------ forward process
    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.noise_schedule.abar(t, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.noise_schedule.q_sample(x0, t, noise)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model must predict for (x0, t, noise) under this objective."""
        if self.objective == "eps":
            return noise
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def training_loss(
        self,
        model: Callable,
        x0: torch.Tensor,
        cond: Any = None,
        generator: torch.Generator | None = None,
        *,
        p_uncond: float = 0.0,
        cond_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error of the model's prediction at a uniformly drawn timestep.

        Classifier-free-style dropping: with ``p_uncond > 0`` each sample keeps its condition
        with probability 1 - p_uncond, or pass ``cond_mask`` (B,) bool (True = keep) yourself;
        the model is then called as ``model(x_t, t, cond, cond_mask=mask)``.
        """
        if not torch.is_tensor(x0) or x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError("x0 must be a tensor with a leading batch dimension")
        if not x0.is_floating_point():
            raise TypeError(f"x0 must be floating point, got {x0.dtype}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        B = x0.shape[0]
        dev = x0.device
        gdev = generator.device if generator is not None else dev
        t = torch.randint(0, self.num_steps, (B,), generator=generator, device=gdev).to(dev)
        noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(dev)
        x_t = self.q_sample(x0, t, noise)
        if cond_mask is None and p_uncond > 0 and cond is not None:
            cond_mask = (torch.rand(B, generator=generator, device=gdev) >= p_uncond).to(dev)
        if cond_mask is not None:
            if cond_mask.shape != (B,):
                raise ValueError(f"cond_mask must have shape ({B},), got {tuple(cond_mask.shape)}")
            pred = model(x_t, t, cond, cond_mask=cond_mask.to(dev, torch.bool))
        else:
            pred = model(x_t, t, cond)
        if pred.shape != x0.shape:
            raise ValueError(f"model returned shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
        return torch.nn.functional.mse_loss(pred.float(), self.target(x0, t, noise).float())

    # ------------------------------------------------------------------ prediction conversions
    def predict_x0_eps(self, x_t, abar: float, pred):
        """(x0, eps) from the model's prediction at a step with cumulative alpha ``abar`` (float)."""
        sa, s1 = math.sqrt(abar), math.sqrt(1 - abar)
        if self.objective == "eps":
            return (x_t - s1 * pred) / sa, pred
        return sa * x_t - s1 * pred, s1 * x_t + sa * pred

    # ------------------------------------------------------------------ sampling plan
    def timesteps(self, steps: int) -> list[int]:
        """The descending training timesteps a sampler with ``steps`` steps visits (see
        :meth:`NoiseSchedule.timesteps`)."""
        return self.noise_schedule.timesteps(steps)

    def make_sampler(self, sampler: str = "ddim", steps: int | None = 50, eta: float = 0.0) -> Sampler:
        """The :class:`Sampler` ("ddim" or "ddpm") over ``steps`` respaced steps (None: all)."""
        return make_sampler(sampler, self.noise_schedule, self.num_steps if steps is None else steps, eta)

    def _plan(self, sampler: str, steps: int, eta: float) -> list[StepCoefficients]:
        """Per step: :class:`StepCoefficients` (t, c_x0, c_eps, c_xt, sigma, abar) of the sampler."""
        return make_sampler(sampler, self.noise_schedule, steps, eta).plan

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        model: Callable,
        shape,
        cond: Any = None,
        sampler: str = "ddim",
        steps: int | None = 50,
        eta: float = 0.0,
        seed: int | None = None,
        cuda_graph: bool | None = None,
        *,
        device=None,
        dtype: torch.dtype = torch.float32,
        guidance_scale: float = 1.0,
        clip_x0: float | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw samples of ``shape`` and return x0.

        sampler "ddim" (``eta`` 0 = deterministic) or "ddpm" (ancestral); ``steps`` None means
        every training step. ``seed`` None draws a seed from torch's global RNG. ``device``
        defaults to the model's (first parameter) device or CPU. ``guidance_scale`` != 1 mixes
        conditional and null-condition predictions (classifier-free guidance). ``clip_x0``
        clamps the predicted x0 to [-clip_x0, clip_x0] at every step.
        ``cuda_graph`` True captures the whole loop as one CUDA graph (cached per shape,
        steps, sampler, dtype...) and replays it; None = on when the device is CUDA.
        """
        _check_choice("sampler", sampler, SAMPLERS)
        steps = self.num_steps if steps is None else steps
        if not 0.0 <= eta:
            raise ValueError(f"eta must be >= 0, got {eta}")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a tuple of positive sizes, got {shape}")
        if device is None:
            p = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
            device = p.device if p is not None else (cond.device if torch.is_tensor(cond) else "cpu")
        device = torch.device(device)
        if torch.is_tensor(cond):
            cond = cond.to(device)
        chain = make_sampler(sampler, self.noise_schedule, steps, eta)
        plan, stochastic = chain.plan, chain.stochastic
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if cuda_graph is None:
            cuda_graph = device.type == "cuda"
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got {device}")
        gen = torch.Generator(device=device).manual_seed(int(seed))
        n_noise = len(plan) if stochastic else 0

        def draw(x_T, noise):
            x_T.copy_(torch.randn(shape, generator=gen, device=device, dtype=dtype))
            if n_noise:
                noise.copy_(torch.randn((n_noise,) + shape, generator=gen, device=device, dtype=dtype))

        ctx = dict(plan=plan, cond=cond, guidance_scale=guidance_scale, clip_x0=clip_x0)
        if cuda_graph:
            if cond is not None and not torch.is_tensor(cond):
                raise TypeError("cuda_graph sampling needs cond to be a tensor or None")
            return self._sample_graphed(model, shape, dtype, device, sampler, steps, eta, n_noise, draw, ctx)
        x_T = torch.empty(shape, device=device, dtype=dtype)
        noise = torch.empty((n_noise,) + shape, device=device, dtype=dtype)
        draw(x_T, noise)
        with torch.no_grad():
            return self._loop(model, x_T, noise, progress=progress, **ctx)

    def _predict(self, model, x, t_vec, cond, guidance_scale):
        pred = model(x, t_vec, cond)
        if guidance_scale != 1.0:
            uncond = model(x, t_vec, None)
            pred = uncond + guidance_scale * (pred - uncond)
        return pred.to(x.dtype)

    def _loop(self, model, x, noise, plan, cond, guidance_scale, clip_x0, progress=False, t_vecs=None):
        """The sampling loop itself: the same code runs eagerly and under CUDA-graph capture.
        Every coefficient is a Python float, so capture bakes it into the graph."""
        B = x.shape[0]
        steps = range(len(plan))
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="sampling", leave=False)
        for i in steps:
            c = StepCoefficients(*plan[i])
            t_vec = t_vecs[i] if t_vecs is not None else torch.full((B,), c.t, device=x.device, dtype=torch.long)
            pred = self._predict(model, x, t_vec, cond, guidance_scale)
            x0, eps = self.predict_x0_eps(x, c.abar, pred)
            if clip_x0 is not None:
                x0 = x0.clamp(-clip_x0, clip_x0)
                if c.c_eps:  # keep eps consistent with the clipped x0 (DDIM)
                    eps = (x - math.sqrt(c.abar) * x0) / math.sqrt(1 - c.abar)
            x = apply_step(c, x, x0, eps, noise[i] if c.sigma > 0 else None)
        return x

    # ------------------------------------------------------------------ CUDA graphs
    def _sample_graphed(self, model, shape, dtype, device, sampler, steps, eta, n_noise, draw, ctx):
        cond = ctx["cond"]
        cond_key = None if cond is None else (tuple(cond.shape), cond.dtype)
        key = (
            _model_key(model), shape, dtype, str(device), sampler, steps, float(eta), cond_key,
            float(ctx["guidance_scale"]), ctx["clip_x0"],
        )
        return self.graphs.run(key, model, shape, dtype, device, n_noise, draw, ctx)

    def _capture(self, model, shape, dtype, device, n_noise, ctx):
        return self.graphs.capture(model, shape, dtype, device, n_noise, ctx)

    def clear_graphs(self) -> None:
        """Drop every captured sampling graph (frees their memory pools)."""
        self.graphs.clear()


def _model_key(model):
    """Identity of a denoiser for the graph cache: a bound method is keyed by its object and
    function (each attribute access makes a new method object)."""
    if inspect.ismethod(model):
        return (id(model.__self__), id(model.__func__))
    return (id(model),)


class _GraphEntry:
    """One captured loop: its static buffers and a strong reference to the model, so the id in
    the cache key cannot be reused by another object while the graph exists."""

    __slots__ = ("graph", "x_T", "noise", "cond", "out", "t_vecs", "model")

    def __init__(self, graph, x_T, noise, cond, out, t_vecs, model):
        self.graph, self.x_T, self.noise, self.cond, self.out = graph, x_T, noise, cond, out
        self.t_vecs, self.model = t_vecs, model

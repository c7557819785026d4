"""Does the SAC agent learn? Synthetic rewards with a known best allocation on real environments.

The environment is the real one (ChannelStructure + FlopsModel + BudgetClipper +
PruningEnvironment of a zoo CNN at --budget); only the reward is synthetic, so the best
sub-network is known exactly. Each landscape hides a target allocation k* (kept channels per
group), built from a ratio profile scaled until it just fits the budget, and scores

    R(k) = sum_l w_l * min(k_l, k*_l) / n_l  /  sum_l w_l * k*_l / n_l      (n_l: group size)

R is non-decreasing in every kept count (like accuracy), and R(k) <= R(k*) = 1 for every k,
so the optimum is 1 by construction, reached at k*: a channel kept beyond k*_l earns nothing,
and one kept below it costs w_l / n_l. Landscapes:

  keep_early   k* keeps the early groups and prunes the late ones hard (uniform is far off)
  keep_late    the opposite
  hidden       a random (seeded) per-group profile and random importances w (lognormal)
  uniform      k* is the uniform allocation itself (a sanity check: nothing to learn)

Per landscape and seed it runs the agent as a run does (jointprune.agent.training: P episodes
per agent epoch, the first --random-epochs with uniform random actions, then K decoder steps and
G SAC updates), with one deterministic (policy-mean) episode among the P after warm-up and
`refine_fraction` of them near the best allocation so far (`--set refine_fraction=0` for SAC's
policy alone), and reports the best R among all its episodes. Random search gets the same number
of reward evaluations (uniform random actions through the same clipper), once plain and once with
the same local search; uniform is the best common ratio.
Agent hyper-parameters are AgentOptions / EnvReprOptions defaults unless overridden.

    python experiments/benchmarks/bench_agent.py [--nets cifar_resnet56 cifar_mobilenet_v2]
        [--landscapes keep_early keep_late hidden uniform] [--seeds 3] [--epochs 30]
        [--set sac_updates=100 alpha=0.1 ...]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jointprune.agent import EnvironmentRepresentation, ReplayBuffer, RewardDecoder, SoftActorCritic  # noqa: E402
from jointprune.agent.episode import STATE_DIM, PruningEnvironment  # noqa: E402
from jointprune.agent.training import refine_episodes, update_phase  # noqa: E402
from jointprune.models import create_model  # noqa: E402
from jointprune.options import AgentOptions, EnvReprOptions  # noqa: E402
from jointprune.pruning import BudgetClipper, ChannelStructure, FlopsModel, KeepRule  # noqa: E402

LANDSCAPES = ("keep_early", "keep_late", "hidden", "uniform")


def build_environment(net: str, budget: float, rule: KeepRule = KeepRule(), centred: bool = False) -> PruningEnvironment:
    model = create_model(net)
    structure = ChannelStructure(model, torch.zeros(1, 3, 32, 32))
    flops = FlopsModel(structure)
    return PruningEnvironment(structure, flops, BudgetClipper(flops, budget, rule), centred=centred)


def fit_profile(env: PruningEnvironment, profile: np.ndarray) -> list[int]:
    """Kept counts for ratios c * profile (capped by the keep rule), with the smallest c that fits."""
    rule, sizes, clipper = env.clipper.rule, env.clipper.sizes, env.clipper

    def kept(c):
        return [rule.keep(n, float(min(c * p, rule.max_ratio))) for n, p in zip(sizes, profile)]

    lo, hi = 0.0, 1e3 / max(float(profile.min()), 1e-3)  # hi: every group at max_ratio
    if not clipper.costs[0].fits(env.flops(np.asarray(kept(hi), dtype=np.float64))):
        raise ValueError("profile cannot meet the budget")
    for _ in range(60):
        mid = (lo + hi) / 2
        if clipper.costs[0].fits(env.flops(np.asarray(kept(mid), dtype=np.float64))):
            hi = mid
        else:
            lo = mid
    return kept(hi)


class Landscape:
    def __init__(self, name: str, env: PruningEnvironment, seed: int = 0):
        n = env.n
        rng = np.random.default_rng(1000 + seed)
        depth = np.arange(n) / max(n - 1, 1)
        weights = np.ones(n)
        if name == "keep_early":
            profile = 0.05 + depth
        elif name == "keep_late":
            profile = 1.05 - depth
        elif name == "hidden":
            profile = rng.uniform(0.0, 1.0, n)
            weights = rng.lognormal(0.0, 0.5, n)
        elif name == "uniform":
            profile = np.ones(n)
        else:
            raise ValueError(f"unknown landscape {name!r}; choose from {LANDSCAPES}")
        self.name = name
        self.target = np.asarray(env.uniform_under_budget() if name == "uniform" else fit_profile(env, profile), dtype=np.float64)
        env.clipper.check(self.target)
        self.sizes = np.asarray(env.clipper.sizes, dtype=np.float64)
        self.w = weights / self.sizes
        self.norm = float((self.w * self.target).sum())
        self.target_flops = env.flops(self.target) / env.flops.dense

    def __call__(self, kept) -> float:
        return float((self.w * np.minimum(np.asarray(kept, dtype=np.float64), self.target)).sum() / self.norm)


def run_agent(env, reward, agent_opts: AgentOptions, env_opts: EnvReprOptions, epochs: int, seed: int,
              deterministic_episode: bool = True, verbose: bool = False) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    h = (agent_opts.hidden,) * 2
    max_ratio = env.clipper.rule.max_ratio
    sac = SoftActorCritic(STATE_DIM, env_opts.dim, max_action=max_ratio, hidden=h, alpha=agent_opts.alpha,
                          gamma=agent_opts.gamma, tau=agent_opts.tau, return_weight=agent_opts.return_weight)
    env_repr = EnvironmentRepresentation(epochs, env_opts.dim, fixed=not env_opts.enabled)
    decoder = RewardDecoder(STATE_DIM, 1, env_opts.dim, hidden=h)
    replay = ReplayBuffer(agent_opts.replay_capacity, STATE_DIM, 1)
    actor_opt = torch.optim.Adam(sac.actor_parameters(), lr=agent_opts.actor_lr)
    critic_opt = torch.optim.Adam(sac.critic_parameters(), lr=agent_opts.critic_lr)
    env_opt = torch.optim.Adam(list(env_repr.parameters()) + list(decoder.parameters()), lr=env_opts.lr)
    best, best_kept, curve, det_rewards = -1.0, None, [], []
    for t in range(epochs):
        env_repr.begin_epoch(t)
        with torch.no_grad():
            z = env_repr.z(t).detach()
        random = t < agent_opts.random_epochs
        # as a run does; the incumbent is the best allocation so far (the synthetic reward has no noise)
        refine = refine_episodes(agent_opts, random, best_kept is not None)
        for p in range(agent_opts.episodes_per_epoch):
            det = deterministic_episode and not random and p == agent_opts.episodes_per_epoch - 1
            if random:
                policy = lambda s: float(sac.random_action(1, generator=gen, spread=agent_opts.random_spread)[0, 0])  # noqa: E731
            else:
                policy = lambda s, det=det: float(sac.act(s, z, generator=gen, deterministic=det).reshape(-1)[0])  # noqa: E731
            if p < refine:
                ep = env.rollout_near(best_kept, agent_opts.refine_groups, agent_opts.refine_sigma, gen,
                                      agent_opts.refine_move)
            else:
                ep = env.rollout(policy)
            r = reward(ep.kept)
            if det:
                det_rewards.append(r)
            n = len(ep.kept)
            rew = torch.zeros(n)
            rew[-1] = r
            replay.add(ep.states, ep.actions[:, None], rew, ep.next_states, ep.dones, torch.full((n,), t, dtype=torch.long))
            if r > best:
                best, best_kept = r, list(ep.kept)
        curve.append(best)
        if verbose:
            print(f"    seed {seed} epoch {t}: best {best:.4f} policy mean {det_rewards[-1] if det_rewards else float('nan'):.4f}",
                  flush=True)
        update_phase(sac, env_repr, decoder, replay, actor_opt, critic_opt, env_opt, agent_opts, env_opts, gen)
    return {"best": best, "curve": curve, "det_last": det_rewards[-1] if det_rewards else float("nan")}


def random_search(env, reward, evaluations: int, seed: int, spread: float = 1.0,
                  refine: AgentOptions | None = None) -> float:
    """The best of `evaluations` episodes of random actions, drawn as the agent's random epochs
    draw them (the middle `spread` of the action range) through the same environment. With
    `refine` (agent options), episodes are grouped in epochs of `episodes_per_epoch` and, after the
    random epochs, the first of each epoch search near the best so far as the agent's do
    (refine_episodes): random search given the agent's local search, to tell the two apart."""
    g = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    m = env.clipper.rule.max_ratio
    lo, hi = (0.5 - spread / 2) * m, (0.5 + spread / 2) * m
    best, best_kept = -1.0, None
    for i in range(evaluations):
        near = False
        if refine is not None:
            epoch, p = divmod(i, refine.episodes_per_epoch)
            near = p < refine_episodes(refine, epoch < refine.random_epochs, best_kept is not None)
        if near:
            ep = env.rollout_near(best_kept, refine.refine_groups, refine.refine_sigma, gen, refine.refine_move)
        else:
            ep = env.rollout(lambda s: float(g.uniform(lo, hi)))
        r = reward(ep.kept)
        if r > best:
            best, best_kept = r, list(ep.kept)
    return best


def _parse_sets(pairs):
    agent, envr = {}, {}
    afields = {f.name: f.type for f in dataclasses.fields(AgentOptions)}
    efields = {f.name: f.type for f in dataclasses.fields(EnvReprOptions)}
    for pair in pairs:
        key, value = pair.split("=", 1)
        target = envr if key.startswith("env.") else agent
        key = key.removeprefix("env.")
        default = getattr(EnvReprOptions() if target is envr else AgentOptions(), key)
        if key not in (efields if target is envr else afields):
            raise SystemExit(f"unknown option {key}")
        if isinstance(default, bool):
            target[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            target[key] = type(default)(float(value)) if isinstance(default, int) else float(value)
        else:
            target[key] = value
    return AgentOptions(**agent), EnvReprOptions(**envr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["cifar_resnet56", "cifar_mobilenet_v2"])
    ap.add_argument("--landscapes", nargs="+", default=list(LANDSCAPES))
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    ap.add_argument("--epochs", type=int, default=30, help="agent epochs (x episodes_per_epoch = evaluations)")
    ap.add_argument("--verbose", action="store_true", help="print the best-so-far after every agent epoch")
    ap.add_argument("--no-deterministic", action="store_true", help="no policy-mean episode per epoch")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override AgentOptions fields (env.KEY for EnvReprOptions)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    agent_opts, env_opts = _parse_sets(args.set)
    evals = args.epochs * agent_opts.episodes_per_epoch
    print(f"agent: {agent_opts}\nenv_repr: {env_opts}")
    print(f"budget {args.budget}; {args.epochs} agent epochs x {agent_opts.episodes_per_epoch} episodes = {evals} "
          f"reward evaluations per method and seed ({args.epochs * agent_opts.sac_updates} SAC updates); "
          f"{args.seeds} seeds; optimum = 1 by construction")
    for net in args.nets:
        env = build_environment(net, args.budget, centred=agent_opts.centred_actions)
        for name in args.landscapes:
            land = Landscape(name, env)
            t0 = time.perf_counter()
            sac, rnd, det, rnd_refine = [], [], [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                out = run_agent(env, land, agent_opts, env_opts, args.epochs, seed, not args.no_deterministic,
                                args.verbose)
                sac.append(out["best"])
                det.append(out["det_last"])
                rnd.append(random_search(env, land, evals, seed, agent_opts.random_spread))
                if agent_opts.refine_fraction > 0:
                    rnd_refine.append(random_search(env, land, evals, seed, agent_opts.random_spread,
                                                    refine=agent_opts))
            uni = land(env.uniform_under_budget())
            wins = sum(a > b for a, b in zip(sac, rnd))
            print(f"\n{net} ({env.n} groups) / {name}: target uses {land.target_flops:.3f} of dense FLOPs; "
                  f"{time.perf_counter() - t0:.0f}s")
            print(f"  {'method':<24}{'median':>8}{'min':>8}{'max':>8}")
            rows = [("SAC best", sac), ("SAC last policy mean", det), ("random search", rnd)]
            if rnd_refine:
                rows.append(("random search + refine", rnd_refine))
            for label, vals in rows:
                print(f"  {label:<24}{statistics.median(vals):8.4f}{min(vals):8.4f}{max(vals):8.4f}")
            print(f"  {'uniform':<24}{uni:8.4f}")
            print(f"  {'optimum':<24}{1.0:8.4f}")
            print(f"  SAC best > random search in {wins}/{args.seeds} seeds; SAC best within 2% of optimum "
                  f"in {sum(v >= 0.98 for v in sac)}/{args.seeds}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Parameter counts of every library spec against closed forms derived by hand.

The formulas below are written from the papers' architectures as the spec files describe them
(layer by layer), with each layer's size worked out from its definition: a linear map i -> o has
i*o weights and o biases, and so on. They never call graphnet's accounting. Conventions checked:

- the actor outputs 2 x ACT features, the critic 1; onehot(task) is T wide;
- a `task` module has T copies, a `bank(K)` module K copies plus one T x K table w per agent,
  counted in `common` and in by_sharing['bank'];
- the critic is built twice (twin critics), and so is its target; `common` is not copied into it, but with
  `agent(target = copy)` the target holds a copy of the common modules and, where the critic is banked, of w;
- total = actor + 2 critic twins + 2 target twins + common + T temperatures;
- per_task: shared parameters, one copy of the task / bank modules, and K (the task's row of w)
  where a bank is used.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

import graphnet

SPECS = Path(__file__).resolve().parents[1] / "specs"
ENVS = [(39, 4, 10), (12, 3, 5), (39, 4, 50)]   # (obs, act, tasks): MT10, a small one, MT50


# ----------------------------------------------------------------------------- layer sizes
def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def hidden(i: int, width: int, layers: int) -> int:
    """`layers` ReLU layers of `width` units on an i-wide input."""
    return linear(i, width) + (layers - 1) * linear(width, width)


def mlp(i: int, width: int, layers: int, o: int) -> int:
    """Hidden layers, then a linear output layer."""
    return hidden(i, width, layers) + linear(width, o)


@dataclass(frozen=True)
class Net:
    """One network's parameters by sharing mode: shared, one task copy, one bank copy."""

    shared: int = 0
    task: int = 0
    bank: int = 0

    def __add__(self, other: Net) -> Net:
        return Net(self.shared + other.shared, self.task + other.task, self.bank + other.bank)

    def total(self, tasks: int, k: int) -> int:
        return self.shared + tasks * self.task + k * self.bank

    def one_task(self) -> int:
        return self.shared + self.task + self.bank


@dataclass(frozen=True)
class Agent:
    actor: Net
    critic: Net            # one twin
    common: Net = Net()    # modules the actor and critic both read (not the bank table)
    k: int = 0             # bank size, 0 without a bank
    target_copy: bool = False   # agent(target = copy)


def expected_report(agent: Agent, tasks: int) -> dict:
    k = agent.k
    table = tasks * k
    actor = agent.actor.total(tasks, k)
    critic = 2 * agent.critic.total(tasks, k)
    common = agent.common.total(tasks, k) + table
    nets = (agent.actor, agent.critic, agent.critic, agent.common)
    by_sharing = {"shared": sum(n.shared for n in nets), "task": tasks * sum(n.task for n in nets),
                  "bank": k * sum(n.bank for n in nets) + table}
    per_task = {"actor": agent.actor.one_task() + agent.common.one_task() + (k if agent.actor.bank else 0),
                "critic": 2 * agent.critic.one_task() + agent.common.one_task() + (k if agent.critic.bank else 0)}
    trainable = actor + critic + common + tasks
    target = critic + (agent.common.total(tasks, k) + (table if agent.critic.bank else 0) if agent.target_copy else 0)
    return {"total": trainable + target, "trainable": trainable, "actor": actor, "critic": critic,
            "critic_target": target, "common": common, "alpha": tasks, "by_sharing": by_sharing,
            "per_task": per_task}


def report(name: str, params: dict, env: tuple[int, int, int], meta: int = 768, specs: Path = SPECS) -> dict:
    obs, act, tasks = env
    rep = graphnet.load(specs / f"{name}.gn", **params).params(obs=obs, act=act, tasks=tasks, meta=meta)
    return rep.model_dump(exclude={"by_module"})


def check(name: str, params: dict, env: tuple[int, int, int], agent: Agent, meta: int = 768) -> None:
    assert report(name, params, env, meta) == expected_report(agent, env[2])


def cases(param_sets: list[dict], envs: list[tuple[int, int, int]] = ENVS) -> list:
    return [pytest.param(p, e, id=f"{'-'.join(f'{k}={v}' for k, v in p.items()) or 'defaults'}-{e}")
            for p, e in itertools.product(param_sets, envs)]


# ----------------------------------------------------------------------------- the methods
def mtsac_counts(obs, act, tasks, H=400, N=3) -> Agent:
    return Agent(actor=Net(shared=mlp(obs + tasks, H, N, 2 * act)),
                 critic=Net(shared=mlp(obs + act + tasks, H, N, 1)))


def mhsac_counts(obs, act, tasks, H=400, N=3) -> Agent:
    def trunk(i, o):
        return Net(shared=hidden(i, H, N), task=linear(H, o))
    return Agent(actor=trunk(obs + tasks, 2 * act), critic=trunk(obs + act + tasks, 1))


def film_counts(obs, act, tasks, H=400, N=3) -> Agent:
    def trunk(i, o):
        gamma_beta = 2 * linear(tasks, H)        # gamma(z) and beta(z), each linear in the one-hot z
        return Net(shared=mlp(i, H, N, o) + N * gamma_beta)
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


def dgrad_a_counts(obs, act, tasks, H=160, N=3) -> Agent:
    def trunk(i, o):
        affine = linear(tasks, H * H + H)        # M(z) (H x H) and beta(z) (H), linear in the one-hot z
        return Net(shared=mlp(i, H, N, o) + N * affine)
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


def router(i, L, M, G) -> int:
    """Soft Modularization's routing network on an i-wide input, routing layers G wide."""
    embed = linear(i, G)                                                # g(f(s) * h(z))
    down = (L - 1) * linear(G, M * M) + linear(G, M)                    # W_d: routings, then module weights
    up = sum(linear((l - 1) * M * M, G) for l in range(2, L + 1))       # W_u: conditions on earlier routings
    return embed + down + up


def softmod_counts(obs, act, tasks, L=4, M=4, W=128, G=256, E=400) -> Agent:
    def trunk(i, o):
        base = linear(i, E) + linear(E, E)
        task_embedding = linear(tasks, E)
        modules = M * linear(E, W) + (L - 1) * M * linear(W, W)
        return Net(shared=base + task_embedding + router(E, L, M, G) + modules + linear(W, o))
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


def care_encoder(i, K, E, Z, ctx, meta) -> Net:
    """CARE's encoder: K experts (two layers of E) weighted by attention on the context z (Z wide);
    z is a learned per-task row (T x Z in all) or an MLP of the task's META-wide description embedding."""
    context = Net(task=Z) if ctx == "learned" else Net(shared=linear(meta, Z) + linear(Z, Z))
    return context + Net(shared=linear(Z, K) + K * (linear(i, E) + linear(E, E)))


def care_counts(obs, act, tasks, K=4, E=50, Z=50, H=400, N=3, ctx="learned", meta=768) -> Agent:
    def side(i, extra, o):
        return care_encoder(i, K, E, Z, ctx, meta) + Net(shared=mlp(E + Z + extra, H, N, o))
    return Agent(actor=side(obs, 0, 2 * act), critic=side(obs, act, 1))


COMBINE = {"none": lambda n: 0, "add": lambda n: 0, "sum": lambda n: 2, "proj": lambda n: 2 * n * n}


def ptsl_trunk(i, o, H, D, N, g, proj, first) -> Net:
    """PTSL on an i-wide input: shared backbone, D-wide task layers, bias-free projections."""
    projections = 2 * H * D * (1 if proj == "shared" else N)            # P_down and P_up, once or per layer
    first_down = linear(i, D, bias=False) if first == "down" else 0
    shared = mlp(i, H, N, o) + projections + first_down + COMBINE[g](D)
    first_task = linear(D, D) if first == "down" else linear(i, D)
    task = first_task + (N - 1) * linear(D, D) + linear(D, o)
    return Net(shared=shared, task=task)


def ptsl_counts(obs, act, tasks, H=367, D=50, N=3, g="none", proj="shared", first="down") -> Agent:
    return Agent(actor=ptsl_trunk(obs, 2 * act, H, D, N, g, proj, first),
                 critic=ptsl_trunk(obs + act, 1, H, D, N, g, proj, first))


def care_ptsl_counts(obs, act, tasks, H=326, D=50, N=3, g="none", proj="shared", first="down",
                     K=4, E=50, Z=50, ctx="learned", meta=768) -> Agent:
    def side(extra, o):
        encoder = care_encoder(obs, K, E, Z, ctx, meta)
        return encoder + ptsl_trunk(E + Z + extra, o, H, D, N, g, proj, first)
    return Agent(actor=side(0, 2 * act), critic=side(act, 1))


def paco_counts(obs, act, tasks, K=5, H=400, N=3, variant="ac_shared", w_init="normal") -> Agent:
    """w_init only changes how the table w starts, not its size."""
    def composed(i, o):
        if variant == "output_only":
            return Net(shared=hidden(i, H, N), bank=linear(H, o))
        return Net(bank=mlp(i, H, N, o))
    actor = composed(obs + tasks, 2 * act)
    critic_in = obs + act + tasks
    critic = Net(shared=mlp(critic_in, H, N, 1)) if variant == "actor_only" else composed(critic_in, 1)
    return Agent(actor=actor, critic=critic, k=K)


def shared_unique_counts(obs, act, tasks, K=5, H=400, N=3, U=32, UH=128) -> Agent:
    unique = Net(shared=linear(obs, UH) + linear(UH, U))
    return Agent(actor=Net(bank=mlp(obs + U + tasks, H, N, 2 * act)),
                 critic=Net(bank=mlp(obs + act + U + tasks, H, N, 1)), common=unique, k=K)


def taco_counts(obs, act, tasks, K=5, H=400, N=3) -> Agent:
    return Agent(actor=Net(bank=mlp(obs + tasks, H, N, 2 * act)),
                 critic=Net(bank=mlp(obs + act + tasks, H, N, 1)), k=K)


def moore_counts(obs, act, tasks, K=4, H=400, D=400) -> Agent:
    def trunk(i, o):
        experts = K * mlp(i, H, 1, D)             # K expert MLPs
        weighting = linear(tasks, K, bias=False)  # the task's weights of the experts, from the one-hot
        return Net(shared=experts + weighting, task=linear(D, o))
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


def mmoe_counts(obs, act, tasks, K=4, H=400, D=400, TOWER=128) -> Agent:
    def trunk(i, o):
        experts = K * (linear(i, H) + linear(H, D))
        return Net(shared=experts, task=linear(i, K) + mlp(D, TOWER, 1, o))   # a gate and a tower per task
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


def hyper_counts(obs, act, tasks, H=400, N=2, Z=64, G=256) -> Agent:
    def trunk(i, o):
        generator = linear(Z, G) + linear(G, H * o + o)    # z -> the last layer's matrix and bias
        return Net(shared=hidden(i, H, N) + generator, task=Z)
    return Agent(actor=trunk(obs, 2 * act), critic=trunk(obs + act, 1))


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("params,env", cases([{}, {"H": 256}, {"N": 1}, {"N": 4, "H": 64}]))
def test_mtsac(params, env):
    check("mtsac", params, env, mtsac_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"H": 256}, {"N": 1}, {"N": 2, "H": 100}]))
def test_mhsac(params, env):
    check("mhsac", params, env, mhsac_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"H": 128}, {"N": 1}, {"N": 5, "H": 32}]))
def test_film(params, env):
    check("film", params, env, film_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"H": 64}, {"N": 1}, {"N": 2, "H": 200}]))
def test_dgrad_a(params, env):
    check("dgrad_a", params, env, dgrad_a_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([
    {}, {"L": 2, "M": 2, "W": 256}, {"L": 1}, {"L": 1, "M": 3}, {"L": 2}, {"L": 3, "M": 5, "W": 64},
    {"G": 128, "E": 200}]))
def test_softmod(params, env):
    check("softmod", params, env, softmod_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([
    {}, {"K": 2}, {"E": 64, "Z": 32}, {"H": 256, "N": 2}, {"ctx": "meta"}, {"ctx": "meta", "K": 6, "Z": 20}]))
def test_care(params, env):
    check("care", params, env, care_counts(*env, **params))


@pytest.mark.parametrize("meta", [384, 1024])
def test_care_meta_width(meta):
    params = {"ctx": "meta"}
    check("care", params, ENVS[0], care_counts(*ENVS[0], **params, meta=meta), meta=meta)


PTSL_OPTIONS = [{"g": g, "proj": p, "first": f} for g, p, f in itertools.product(
    ["none", "add", "sum", "proj"], ["shared", "independent"], ["down", "direct"])]
PTSL_SIZES = [{"H": 326}, {"D": 32, "H": 274}, {"N": 2, "H": 400}, {"N": 1, "D": 16}, {"N": 4, "g": "proj"}]


@pytest.mark.parametrize("params,env", cases([{}] + PTSL_OPTIONS + PTSL_SIZES))
def test_ptsl(params, env):
    check("ptsl", params, env, ptsl_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([
    {}, {"g": "proj"}, {"g": "sum", "proj": "independent"}, {"first": "direct"}, {"D": 32, "H": 274},
    {"N": 2, "H": 400}, {"ctx": "meta"}, {"K": 2, "E": 40, "Z": 30}]))
def test_care_ptsl(params, env):
    check("care_ptsl", params, env, care_ptsl_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([
    {}, {"variant": "actor_only"}, {"variant": "output_only"}, {"K": 3, "H": 128},
    {"K": 2, "N": 1, "variant": "output_only"}, {"N": 2, "variant": "actor_only"}])
    + cases([{"K": 10, "w_init": "onehot"}], [(39, 4, 10)]))
def test_paco(params, env):
    check("paco", params, env, paco_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"K": 3}, {"U": 16, "UH": 64}, {"H": 256, "N": 2}]))
def test_shared_unique(params, env):
    check("shared_unique", params, env, shared_unique_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"K": 8}, {"H": 200, "N": 2}]))
def test_taco(params, env):
    check("taco", params, env, taco_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"K": 2}, {"H": 64, "D": 32}]))
def test_moore(params, env):
    check("moore", params, env, moore_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"K": 6}, {"H": 64, "D": 32, "TOWER": 16}]))
def test_mmoe(params, env):
    check("mmoe", params, env, mmoe_counts(*env, **params))


@pytest.mark.parametrize("params,env", cases([{}, {"N": 3}, {"H": 64, "Z": 8, "G": 32}]))
def test_hyper(params, env):
    check("hyper", params, env, hyper_counts(*env, **params))


def test_every_library_spec_is_covered():
    tested = {name.removesuffix("_counts") for name in globals() if name.endswith("_counts")}
    assert tested == set(graphnet.library_names())


def test_care_ptsl_matches_care_at_mt10():
    """The paper picks H = 326, D = 50 so that CARE + PTSL matches CARE's size on MT10 (within 0.01%)."""
    mt10 = (39, 4, 10)
    care = expected_report(care_counts(*mt10), 10)["total"]
    care_ptsl = expected_report(care_ptsl_counts(*mt10), 10)["total"]
    assert abs(care_ptsl - care) <= 1e-4 * care
    counted = {name: report(name, {}, mt10)["total"] for name in ("care", "care_ptsl")}
    assert abs(counted["care_ptsl"] - counted["care"]) <= 1e-4 * counted["care"]


@pytest.mark.parametrize("name, params", [("shared_unique", {}), ("shared_unique", {"U": 16}), ("paco", {}),
                                          ("paco", {"variant": "actor_only"}), ("paco", {"variant": "output_only"})])
def test_a_target_copy_holds_the_common_parameters_the_critic_reads(tmp_path, name, params):
    """agent(target = copy): shared-unique's target copies the unique features' encoder and w; PaCo's copies w
    where its critic is banked (ac_shared, output_only), and nothing more where it is not (actor_only)."""
    text = (SPECS / f"{name}.gn").read_text()
    assert text.count("agent {") == 1
    (tmp_path / f"{name}.gn").write_text(text.replace("agent {", "agent(target = copy) {"))
    counts = {"shared_unique": shared_unique_counts, "paco": paco_counts}[name]
    for env in ENVS[:2]:
        agent = counts(*env, **params)
        copied = Agent(agent.actor, agent.critic, agent.common, agent.k, target_copy=True)
        assert report(name, params, env, specs=tmp_path) == expected_report(copied, env[2])

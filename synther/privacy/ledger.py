"""The privacy ledger: everything needed to check a release's (ε, δ) claim, saved with every artifact.

A ledger travels with the model: a checkpoint's ledger lists every dataset the model has ever been trained on and
how (`data_uses`: public pre-training, DP fine-tuning, or non-private training), and every DP mechanism that ever
read sensitive data is an accountant entry, either this run's DP-SGD or one of `prior_mechanisms` (a DP
normalizer, an earlier DP fine-tune the model started from). ε is the composition of all of them, so fine-tuning
a fine-tuned model cannot make the earlier use disappear; a model trained on sensitive data without DP is never
private again.
"""
from dataclasses import asdict, dataclass, field
from typing import Any

from synther.errors import UserError
from synther.privacy.accounting import TAIL_DELTA_FRACTION, epsilon_replace_one, epsilon_spent, tail_delta

# The cap of the 24-bit Box–Muller generators this project used before it recorded a cap (|z| ≤ √(48 ln 2)):
# entries without a recorded `z_max` are charged with it.
LEGACY_Z_MAX = 5.768


@dataclass
class PrivacyLedger:
    target_epsilon: float | None = None  # None: no sensitive data has been used (public pre-training only)
    delta: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    expected_batch_size: float | None = None
    clip_norm: float | None = None
    clipping_mode: str | None = None
    noise_z_max: float | None = None  # a lower bound of the noise generator's cap on |z| (in units of σC)
    planned_steps: int = 0
    steps_taken: int = 0
    sensitive_dataset: str | None = None
    sensitive_train_rows: int = 0  # treated as public, as opacus does when it sets q = batch / N
    sensitive_heldout_rows: int = 0
    public_datasets: list[str] = field(default_factory=list)
    # Other mechanisms run on the sensitive data, as accountant entries (σ, q, steps) with their generator's tail
    # cap's lower bound z_max, e.g. a DP normalizer or an earlier DP fine-tune of the checkpoint this run started from.
    prior_mechanisms: list[dict[str, Any]] = field(default_factory=list)
    # Every training run behind this model, oldest first, this run last: phase, datasets (with content hashes),
    # and use: 'public', 'dp' or 'non-private'.
    data_uses: list[dict[str, Any]] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)  # statistic -> where it came from
    # False when the model has been trained on sensitive data WITHOUT DP, in this run or any run before it
    # (attack baselines): nothing is guaranteed.
    private: bool = True

    def _prior(self) -> list[tuple[float, float, int, float]]:
        return [(float(s), float(q), int(t), float(m.get("z_max", LEGACY_Z_MAX)))
                for m in self.prior_mechanisms for s, q, t in [m["accountant_entry"]]]

    def mechanisms(self) -> list[tuple[float, float, int, float]]:
        """Every accounted mechanism as (σ, q, steps, z_max): the prior ones, then this run's DP-SGD."""
        entries = self._prior()
        if self.noise_multiplier is not None and self.steps_taken > 0:
            entries.append((float(self.noise_multiplier), float(self.sample_rate), int(self.steps_taken),
                            float(self.noise_z_max if self.noise_z_max is not None else LEGACY_Z_MAX)))
        return entries

    def history(self) -> list[tuple[float, float, int]]:
        return [(s, q, t) for s, q, t, _ in self.mechanisms()]

    def epsilon_spent(self) -> float:
        if not self.private:
            return float("inf")
        if self.delta is None:
            return 0.0
        return epsilon_spent(self.history(), self.delta, self.accountant or "rdp")

    def epsilon_replace_one(self) -> float:
        """ε of the same history under replace-one neighbours (for users who cannot treat N as public)."""
        if not self.private:
            return float("inf")
        if self.delta is None:
            return 0.0
        return epsilon_replace_one(self.history(), self.delta)

    def delta_tail(self) -> float:
        """δ added by the noise generators' capped tails (see accounting.tail_delta)."""
        return tail_delta(self.mechanisms()) if self.private else 0.0

    def delta_total(self) -> float | None:
        return None if self.delta is None else self.delta + self.delta_tail()

    def check_tail(self, sigma: float, sample_rate: float, steps: int, z_max: float) -> None:
        """Refuse a run whose noise tail would add more than TAIL_DELTA_FRACTION·δ (with the history so far)."""
        if self.delta is None:
            return
        planned = tail_delta([*self._prior(), (sigma, sample_rate, steps, z_max)])
        if planned > TAIL_DELTA_FRACTION * self.delta:
            raise UserError(
                f"the noise generator's capped tail (cap ≥ {z_max:.3f}σ) would add δ ≈ {planned:.2g} at "
                f"σ={sigma:.4g} over {steps} steps, more than {TAIL_DELTA_FRACTION:g}·δ = "
                f"{TAIL_DELTA_FRACTION * self.delta:.2g}: "
                "lower the target ε (a larger σ), train fewer steps, or use a generator with a longer tail "
                "(--dp.noise_generator torch reaches 12.1σ, the Philox kernel 9.4σ)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epsilon_spent": self.epsilon_spent(),
                "epsilon_replace_one": self.epsilon_replace_one(), "delta_tail": self.delta_tail(),
                "delta_total": self.delta_total(), "guarantee": self.describe()}

    def describe(self) -> str:
        if not self.private:
            return (f"NOT differentially private: trained on {self._non_private_datasets()} without DP "
                    "(a reference for attacks and audits; never release it)")
        if self.target_epsilon is None:
            return "no sensitive data used: nothing to account"
        others = len(self.prior_mechanisms)
        return (f"({self.epsilon_spent():.4g}, {self.delta_total():.4g})-DP for each record (one transition, i.e. "
                f"one row (s, a, r, s', done)) of {self.sensitive_dataset}, under add/remove-one neighbours with the "
                f"row count treated as public; ε = {self.epsilon_replace_one():.4g} under replace-one neighbours "
                f"(PLD accountant). "
                f"DP-SGD: {self.accountant} accountant, Poisson rate {self.sample_rate:.4g}, "
                f"σ={self.noise_multiplier:.4g}, C={self.clip_norm}, {self.steps_taken} steps"
                + (f", composed with {others} other mechanism(s) on sensitive data: "
                   + "; ".join(str(m.get("mechanism", "unnamed")) for m in self.prior_mechanisms) if others else "")
                + f"; δ includes {self.delta_tail():.2g} for the noise tail (capped at ≥ "
                f"{self.noise_z_max if self.noise_z_max is not None else LEGACY_Z_MAX:.3f}σ)")

    def _non_private_datasets(self) -> str:
        names = [d.get("name") or d.get("spec") for u in self.data_uses if u.get("use") == "non-private"
                 for d in u.get("datasets", [])]
        return ", ".join(dict.fromkeys(str(n) for n in names)) or str(self.sensitive_dataset)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrivacyLedger":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

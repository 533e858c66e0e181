"""The privacy ledger: everything needed to check a release's (ε, δ) claim, saved with every artifact."""
from dataclasses import asdict, dataclass, field
from typing import Any

from synther.privacy.accounting import epsilon_spent


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
    planned_steps: int = 0
    steps_taken: int = 0
    sensitive_dataset: str | None = None
    sensitive_train_rows: int = 0  # treated as public, as opacus does when it sets q = batch / N
    sensitive_heldout_rows: int = 0
    public_datasets: list[str] = field(default_factory=list)
    # Other mechanisms run on the sensitive data, as accountant entries (σ, q, steps), e.g. a DP normalizer.
    prior_mechanisms: list[dict[str, Any]] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)  # statistic -> where it came from
    # False only for reference runs trained on sensitive data WITHOUT DP (attack baselines): nothing is guaranteed.
    private: bool = True

    def history(self) -> list[tuple[float, float, int]]:
        entries = [tuple(m["accountant_entry"]) for m in self.prior_mechanisms]
        if self.noise_multiplier is not None and self.steps_taken > 0:
            entries.append((self.noise_multiplier, self.sample_rate, self.steps_taken))
        return entries

    def epsilon_spent(self) -> float:
        if not self.private:
            return float("inf")
        if self.delta is None:
            return 0.0
        return epsilon_spent(self.history(), self.delta, self.accountant or "rdp")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epsilon_spent": self.epsilon_spent(),
                "guarantee": self.describe()}

    def describe(self) -> str:
        if not self.private:
            return (f"NOT differentially private: trained on {self.sensitive_dataset} without DP "
                    "(a reference for attacks and audits; never release it)")
        if self.target_epsilon is None:
            return "no sensitive data used: nothing to account"
        return (f"({self.epsilon_spent():.4g}, {self.delta:g})-DP for each record of {self.sensitive_dataset} "
                f"(add/remove neighbours, {self.accountant} accountant, Poisson rate {self.sample_rate:.4g}, "
                f"σ={self.noise_multiplier:.4g}, C={self.clip_norm}, {self.steps_taken} steps)")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrivacyLedger":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in fields})

"""Direct preference optimisation: ``attnlab finetune dpo RECIPE`` teaches a chat model which reply to prefer.

``init`` is a chat model (an ``sft`` run, ``RUN`` or ``RUN/model``; also an ``attnlab train`` run,
``hf:DIR`` or ``preset:NAME`` with ``tokenizer: bpe:N``); the data are preference pairs
(:func:`attnlab.data.chat_data.read_preferences`: ``{"prompt", "chosen", "rejected"}`` per line)::

    attnlab data prepare preferences --out data/preferences
    attnlab finetune dpo dpo-chat init=runs/sft-chat

Each pair becomes two conversations, ``prompt + [chosen]`` and ``prompt + [rejected]``, rendered
with the model's chat template; only the final reply's tokens (its content and end-of-turn marker)
are scored. A pair longer than ``options.max_length`` tokens is skipped and counted (truncating it
would cut the reply). With ``p`` the policy's and ``r`` the reference model's summed log-probability
of a reply, the loss is ``-log σ(β ((p_c − r_c) − (p_r − r_r)))`` and the implicit rewards are
``β (p − r)``. The summed log-probabilities come from one forward pass over the batch's chosen and
rejected conversations together (:func:`attnlab.eval.logprobs.sequence_logprobs`, which the instruct
suite's preference accuracy uses too).

The reference is the model the run starts from. Its log-probabilities of every pair (train, val and
test) are computed once, in :meth:`DPOTask.prepare` (batched, no gradients, eval mode, LoRA adapters
switched off with :func:`~attnlab.finetune.lora.adapters_disabled`: no second copy of the weights),
kept in memory and written to ``RUN/reference_logps.safetensors``; ``--resume`` reads them back and
never recomputes them from trained weights. A pair finds its values by a digest of its tokens.

Token ids in the data. DPO tokenizes the text itself, with this model's tokenizer and template.
A record may also carry ids made elsewhere (``prompt_input_ids`` / ``chosen_input_ids`` /
``rejected_input_ids``, as TRL datasets do) or a ``tokenizer`` fingerprint; they are checked, never
used, and a record that fails is refused with its ``FILE line N``:

- ``tokenizer`` must equal :func:`tokenizer_fingerprint` of the model's tokenizer (the sha256 of its
  ``tokenizer.json`` text, chat tokens included);
- each ``*_input_ids`` must be a list of ids in this vocabulary that decodes, with this tokenizer, to
  text containing its field's text (the reply; for the prompt, its last user turn);
- any other field ending in ``input_ids`` is refused (it cannot be checked).

Metrics: during training ``reward_accuracy`` (share of pairs whose chosen reward is higher),
``reward_chosen``, ``reward_rejected`` and ``reward_margin`` go to ``metrics.jsonl`` beside the loss;
validation adds ``preference_accuracy`` (reference-free: the policy gives the chosen reply the higher
log-probability). At step 0 every margin is 0, so the loss is log 2 and the reward accuracy 0.

The headline metric, which picks the best model, is the validation DPO ``loss`` (lower is better),
not ``reward_accuracy``: accuracy is a step function of the sign of each margin that saturates
(on separable pairs it reaches 1.0 within a few steps and ties from then on, so the first step to
reach it would be kept however much the margins grow after), while the loss is continuous, counts
both the sign and the size of every margin, and rises again when the policy overfits the training
pairs.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data.chat import ChatTemplate, encode_conversation
from attnlab.data.chat_data import PreferencePair, read_preferences
from attnlab.data.tokenizer import Tokenizer
from attnlab.errors import AttnlabError, CheckpointError, ConfigError
from attnlab.eval.logprobs import pad_sequences, sequence_logprobs
from attnlab.finetune.lora import adapters_disabled
from attnlab.finetune.recipe import Task
from attnlab.finetune.tasks.chat_base import (
    build_chat_model,
    lora_extra_modules,
    lora_notice,
    restore_chat_model,
    template_of,
)
from attnlab.finetune.tasks.dpo_data import (
    REFERENCE_FILE,
    check_token_ids,
    read_reference,
    tokenizer_fingerprint,
    write_reference,
)
from attnlab.validation import NON_NEGATIVE, POSITIVE, Range, check_ranges

TRAIN_METRICS = ("reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin")


@dataclass
class DPOOptions:
    """Options of the ``dpo`` task (the recipe's ``options`` section).

    Attributes:
        beta: how far the policy may move from the reference (larger: closer to it).
        max_length: most tokens of a conversation (prompt and reply); longer pairs are skipped
            (``0``: the model's context).
    """

    beta: float = 0.1
    max_length: int = 0

    _RANGES: ClassVar[dict[str, Range]] = {"beta": POSITIVE,
                                           "max_length": NON_NEGATIVE.with_note("0: the model's context")}

    def __post_init__(self) -> None:
        check_ranges(self, "options", self._RANGES)


@dataclass(frozen=True)
class PairFeature:
    """One preference pair, tokenized.

    Attributes:
        chosen_ids: token ids of ``prompt + [chosen]``.
        chosen_mask: per token, whether it is the chosen reply's (content and end-of-turn marker).
        rejected_ids: token ids of ``prompt + [rejected]``.
        rejected_mask: the same for the rejected reply.
        key: digest of the four lists: where the pair's reference log-probabilities are kept.
        where: ``"FILE line N"``.
    """

    chosen_ids: tuple[int, ...]
    chosen_mask: tuple[bool, ...]
    rejected_ids: tuple[int, ...]
    rejected_mask: tuple[bool, ...]
    key: bytes
    where: str


@dataclass
class DPOTerms:
    """The DPO loss of a batch and its implicit rewards ``β (p − r)``, per pair (B,)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> DPOTerms:
    """``mean(-log σ(β ((p_c − r_c) − (p_r − r_r))))`` over pairs; each argument is (B,) summed log-probs."""
    chosen = beta * (policy_chosen.float() - ref_chosen.float())  # (B,)
    rejected = beta * (policy_rejected.float() - ref_rejected.float())  # (B,)
    return DPOTerms(-F.logsigmoid(chosen - rejected).mean(), chosen, rejected)


def _last_reply(mask: list[bool]) -> list[bool]:
    """``mask`` reduced to its last run of ``True`` (the final assistant turn; earlier ones are the prompt's)."""
    end = max((i for i, m in enumerate(mask) if m), default=-1)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [start <= i <= end for i in range(len(mask))]


def _digest(*seqs: Sequence[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for s in seqs:
        h.update(len(s).to_bytes(8, "little"))
        h.update(array("q", s).tobytes())
    return h.digest()


def _source(examples: Sequence[PreferencePair]) -> str:
    """The file of the examples (``FILE`` of ``"FILE line N"``)."""
    return examples[0].where.rsplit(" line ", 1)[0].rsplit(" record ", 1)[0] if examples else "the data"


class DPOTask(Task):
    """Preference tuning of a chat decoder against a frozen reference; see the module docstring."""

    name = "dpo"
    Options = DPOOptions
    metric = "loss"
    higher_is_better = False
    eval_at_start = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.template: ChatTemplate | None = None
        self.tokenizer: Tokenizer | None = None
        self.context = 0
        self._ref_rows: dict[bytes, int] = {}
        self._ref_logps = torch.zeros(0, 2)  # (N, 2): chosen, rejected
        self._eval_feats: dict[int, tuple[list[PreferencePair], list[PairFeature]]] = {}
        self._stats: torch.Tensor | None = None
        self._stats_n = 0

    # -- data and model -------------------------------------------------------
    def read(self, path: str) -> list[PreferencePair]:
        return read_preferences(path)

    def build(self, train: list[PreferencePair]) -> tuple[nn.Module, Tokenizer]:
        texts = [m["content"] for p in train for m in p.prompt] + [r for p in train for r in (p.chosen, p.rejected)]
        chat = build_chat_model(self.cfg, texts, self.log)
        if self.opt.max_length > chat.model.max_context:
            raise ConfigError(f"options.max_length={self.opt.max_length} exceeds the model's context of "
                              f"{chat.model.max_context} tokens; lower options.max_length")
        self.template, self.tokenizer, self.context = chat.template, chat.tokenizer, chat.model.max_context
        self.state = chat.state
        self.head_modules = lora_extra_modules(self.state)
        if notice := lora_notice(self.cfg, chat.added_tokens):
            self.log(notice)
        return chat.model, chat.tokenizer

    def restore(self, state: dict[str, Any], tokenizer: Tokenizer | None) -> nn.Module:
        model = restore_chat_model(state)
        self.template, self.tokenizer, self.context = template_of(state), tokenizer, model.max_context
        self.head_modules = lora_extra_modules(state)
        return model

    def _max_length(self) -> int:
        return self.opt.max_length or self.context

    def _encode(self, examples: list[PreferencePair], tokenizer: Tokenizer) -> tuple[list[PairFeature], list[str]]:
        """The pairs that fit ``max_length``, tokenized, and where those that did not are."""
        tpl = self.template or template_of(self.state)
        fingerprint = tokenizer_fingerprint(tokenizer)
        limit, feats, long = self._max_length(), [], []
        for p in examples:
            check_token_ids(p, tokenizer, fingerprint)
            sides = []
            for reply in (p.chosen, p.rejected):
                ids, mask = encode_conversation(tokenizer, tpl, [*p.prompt, {"role": "assistant", "content": reply}],
                                                p.where)
                mask = _last_reply(mask)
                if not any(mask):
                    raise AttnlabError(f"{p.where}: the chat template leaves no token of the reply to score; "
                                       "check the template")
                sides.append((ids, mask))
            (c_ids, c_mask), (r_ids, r_mask) = sides
            if max(len(c_ids), len(r_ids)) > limit:
                long.append(p.where)
                continue
            feats.append(PairFeature(tuple(c_ids), tuple(c_mask), tuple(r_ids), tuple(r_mask),
                                     _digest(c_ids, c_mask, r_ids, r_mask), p.where))
        if not feats:
            raise AttnlabError(f"all {len(examples)} preference pairs of {_source(examples)} are longer than "
                               f"options.max_length={limit} tokens; raise options.max_length (up to the model's "
                               "context) or give shorter pairs")
        return feats, long

    def features(self, examples: list[PreferencePair], tokenizer: Tokenizer) -> list[PairFeature]:
        """Both conversations of every pair that fits ``max_length`` (the others are skipped, counted in the log)."""
        feats, long = self._encode(examples, tokenizer)
        if long:
            self.log(f"dpo: skipped {len(long)} of {len(examples)} preference pairs longer than {self._max_length()} "
                     f"tokens (options.max_length; first: {long[0]})")
        return feats

    def _eval_features(self, examples: list[PreferencePair], tokenizer: Tokenizer) -> list[PairFeature]:
        cached = self._eval_feats.get(id(examples))
        if cached is not None and cached[0] is examples:
            return cached[1]
        feats = self.features(examples, tokenizer)
        self._eval_feats[id(examples)] = (examples, feats)
        return feats

    def length(self, feature: PairFeature) -> int:
        return max(len(feature.chosen_ids), len(feature.rejected_ids))

    # -- the reference --------------------------------------------------------
    def prepare(self, model: nn.Module, features: list[PairFeature], out_dir: Path, resumed: bool,
                splits: dict[str, list[Any]] | None = None) -> None:
        """The reference log-probabilities of every pair: computed once, or read back on resume.

        Each split is computed in the batches :meth:`evaluate` uses, so at step 0 the validation
        margins are exactly 0 (the loss log 2).
        """
        groups = [list(features)]
        for name in ("val", "test"):  # evaluate() needs theirs too
            if splits and splits.get(name) and self.tokenizer is not None:
                groups.append(self._eval_features(splits[name], self.tokenizer))
        path = Path(out_dir) / REFERENCE_FILE
        if resumed:
            self._ref_rows, self._ref_logps = read_reference(path)
            missing = next((f for g in groups for f in g if f.key not in self._ref_rows), None)
            if missing is not None:
                raise CheckpointError(f"'{path}' has no reference log-probabilities for {missing.where}: the data "
                                      "changed since the run started; resume with the same data or start a new run")
            self.log(f"dpo: reference log-probabilities of {len(self._ref_rows):,} pairs read from {path}")
            return
        rows: dict[bytes, int] = {}
        table = []
        for group in groups:  # pairs seen before (test = val when there is no test file) are not recomputed
            new = list({f.key: f for f in group if f.key not in rows}.values())  # the whole split, usually
            if new:
                table.append(self.reference_logps(model, new))
                for f in new:
                    rows[f.key] = len(rows)
        self._ref_rows, self._ref_logps = rows, torch.cat(table)
        write_reference(path, list(rows), self._ref_logps)
        self.log(f"dpo: reference log-probabilities of {len(rows):,} pairs computed once, saved to {path}")

    def reference_logps(self, model: nn.Module, feats: list[PairFeature]) -> torch.Tensor:
        """(N, 2) chosen and rejected log-probabilities of the base model (adapters off, eval mode, no grad)."""
        training = model.training
        model.eval()
        try:
            with adapters_disabled(model):
                return self._pair_logps(model, feats, desc=f"dpo reference ({len(feats):,} pairs)")
        finally:
            model.train(training)

    def load_reference(self, run_dir: str | Path) -> None:
        """Read a run's reference log-probabilities (``RUN/reference_logps.safetensors``), e.g. to
        :meth:`evaluate` a model from :func:`~attnlab.finetune.load_finetuned` on the run's pairs."""
        self._ref_rows, self._ref_logps = read_reference(Path(run_dir) / REFERENCE_FILE)

    def _reference(self, feats: list[PairFeature]) -> torch.Tensor:
        """(B, 2) cached reference log-probabilities of ``feats``."""
        rows = []
        for f in feats:
            row = self._ref_rows.get(f.key)
            if row is None:
                raise AttnlabError(f"{f.where}: no reference log-probabilities for this pair; they are computed "
                                   "when the run starts (evaluate the run's own pairs, after load_reference(RUN))")
            rows.append(row)
        return self._ref_logps[rows]

    # -- batches, loss, metrics ----------------------------------------------
    @staticmethod
    def _tensors(feats: list[PairFeature]) -> dict[str, torch.Tensor]:
        """Chosen and rejected ids and reply masks, right-padded to one length T: (B, T) each."""
        ids, mask = pad_sequences([(f.chosen_ids, f.chosen_mask) for f in feats]
                                  + [(f.rejected_ids, f.rejected_mask) for f in feats])  # (2B, T)
        b = len(feats)
        return {"chosen_ids": ids[:b], "chosen_mask": mask[:b], "rejected_ids": ids[b:], "rejected_mask": mask[b:]}

    def collate(self, features: list[PairFeature]) -> dict[str, torch.Tensor]:
        """``{chosen,rejected}_{ids,mask}`` (B, T); ``ref_chosen``, ``ref_rejected`` (B,), the cached reference."""
        ref = self._reference(features)  # (B, 2)
        return {**self._tensors(features), "ref_chosen": ref[:, 0], "ref_rejected": ref[:, 1]}

    @staticmethod
    def _policy(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) chosen and (B,) rejected log-probabilities, from one forward over the 2B conversations."""
        ids = torch.cat([batch["chosen_ids"], batch["rejected_ids"]])  # (2B, T)
        mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])  # (2B, T)
        chosen, rejected = sequence_logprobs(model, ids, mask).split(len(batch["chosen_ids"]))  # (B,) each
        return chosen, rejected

    def _pair_logps(self, model: nn.Module, feats: list[PairFeature], desc: str | None = None) -> torch.Tensor:
        """(N, 2) log-probabilities of the pairs' replies, in batches of ``train.batch_size`` pairs
        (with a progress bar named ``desc`` when given)."""
        from tqdm import tqdm

        device = next(model.parameters()).device
        bs, out = self.cfg.train.batch_size, []
        starts = range(0, len(feats), bs)
        with torch.no_grad():
            for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
                batch = {k: v.to(device) for k, v in self._tensors(feats[start:start + bs]).items()}
                out.append(torch.stack(self._policy(model, batch), 1).float().cpu())  # (b, 2)
        return torch.cat(out)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        chosen, rejected = self._policy(model, batch)
        terms = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], self.opt.beta)
        margin = terms.chosen_rewards - terms.rejected_rewards  # (B,)
        stats = torch.stack([(margin > 0).float().mean(), terms.chosen_rewards.mean(), terms.rejected_rewards.mean(),
                             margin.mean()]).detach()
        self._stats = stats if self._stats is None else self._stats + stats
        self._stats_n += 1
        return terms.loss

    def train_metrics(self) -> dict[str, torch.Tensor]:
        if self._stats is None:
            return {}
        means = (self._stats / self._stats_n).unbind()
        self._stats, self._stats_n = None, 0
        return dict(zip(TRAIN_METRICS, means, strict=True))

    def evaluate(self, model: nn.Module, examples: list[PreferencePair],
                 tokenizer: Tokenizer) -> dict[str, float]:
        """DPO loss, reward accuracy / margin / chosen / rejected, preference accuracy, and the pair count."""
        feats = self._eval_features(examples, tokenizer)
        ref = self._reference(feats)  # (N, 2)
        policy = self._pair_logps(model, feats)  # (N, 2)
        terms = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], self.opt.beta)
        margin = terms.chosen_rewards - terms.rejected_rewards  # (N,)
        return {"loss": terms.loss.item(), "reward_accuracy": (margin > 0).float().mean().item(),
                "reward_margin": margin.mean().item(), "reward_chosen": terms.chosen_rewards.mean().item(),
                "reward_rejected": terms.rejected_rewards.mean().item(),
                "preference_accuracy": (policy[:, 0] > policy[:, 1]).float().mean().item(), "pairs": float(len(feats))}

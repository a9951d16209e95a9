"""The LoRA policy. The same module with the adapter disabled is the frozen base LM that scores rewards,
so only one copy of the weights is resident."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from gfnlm.infra.errors import GfnlmError
from gfnlm.infra.seeding import global_seed
from gfnlm.model.temperature import TemperatureEmbedding

POLICY_ADAPTER = "default"  # peft's name of the first adapter: the policy q
EMBEDDING_PREFIX = "temperature_embedding."  # its parameters are saved beside the LoRA weights in the adapter file
EMBEDDING_FILE = "temperature_embedding.safetensors"  # its file in a peft adapter folder


@dataclass
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")


class Policy:
    """A causal LM wrapped with a LoRA adapter (peft).

    ``model`` runs the policy (adapter on); inside ``with policy.base():`` it runs the base model.
    The module is always kept in eval mode: LoRA dropout is not used, so the log-probabilities in the
    loss are exactly those of the policy that samples.
    """

    def __init__(self, base_model, tokenizer, lora: LoraSettings, seed: int = 0):
        targets = lora.target_modules
        if isinstance(targets, str) and targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]  # "q_proj,v_proj" from the command line
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=0.0,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with global_seed(seed):  # adapter init must not depend on (or move) the caller's stream
            try:
                self.model = get_peft_model(base_model, config)
            except ValueError as exc:  # peft's "target modules not found"
                raise GfnlmError(f"LoRA targets {lora.target_modules!r} do not name modules of this model; "
                                 "use all-linear or names such as q_proj,v_proj.") from exc
        self.model.eval()
        self.tokenizer = tokenizer
        self.temperature_embedding: TemperatureEmbedding | None = None

    def add_temperature_embedding(self, low: float, high: float, stop_token: int) -> TemperatureEmbedding:
        """Let the policy read a reward temperature in [low, high]: a learned vector e(T) added to its input
        embeddings, a learned factor on its logits, a learned offset on ``stop_token``'s logit and a learned
        factor on the output of each of its LoRA layers (see gfnlm.model.temperature).
        It is a trainable submodule of the model (so the optimizer and DDP see it) and is saved with the
        policy's adapter; the base model (adapter off) and other adapters never see it."""
        if self.temperature_embedding is not None:
            raise GfnlmError("The policy already has a temperature embedding.")
        if not 0 <= stop_token < self.vocab_size:
            raise GfnlmError(f"The stop token {stop_token} is outside the vocabulary (size {self.vocab_size}).")
        embeddings = self.model.get_input_embeddings()
        module = TemperatureEmbedding(embeddings.embedding_dim, low, high, stop_token).to(self.device)
        self.model.add_module("temperature_embedding", module)
        self.temperature_embedding = module
        lora_layers = [layer for layer in self.model.modules()
                       if isinstance(layer, LoraLayer) and POLICY_ADAPTER in layer.lora_B]
        lora_layer = lora_layers[0]  # every LoRA layer shares the adapter switches

        def reads() -> bool:
            return (module.temperature is not None and not lora_layer.disable_adapters
                    and lora_layer.active_adapters == [POLICY_ADAPTER])

        def add_offset(_module, _inputs, output):
            return output + module.offset().to(output.dtype) if reads() else output

        def adjust_logits(_module, _inputs, output):
            return module.adjust_logits(output) if reads() else output

        def scale_lora_output(_module, _inputs, output):  # peft adds lora_B(lora_A(x)) x its scaling
            return output * module.adapter_factor().to(output.dtype) if reads() else output

        embeddings.register_forward_hook(add_offset)
        self.model.get_output_embeddings().register_forward_hook(adjust_logits)
        for layer in lora_layers:
            layer.lora_B[POLICY_ADAPTER].register_forward_hook(scale_lora_output)
        return module

    def temperature_state(self) -> dict[str, torch.Tensor]:
        module = self.temperature_embedding
        return {} if module is None else {EMBEDDING_PREFIX + k: v for k, v in module.state_dict().items()}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextmanager
    def base(self):
        """Run the base LM (adapter off) inside this block."""
        with self.model.disable_adapter():
            yield self.model

    def add_adapter(self, name: str, seed: int = 0) -> None:
        """A second LoRA adapter on the same base weights, e.g. a likelihood model p(Y | X, Z) beside the
        policy, with the policy's targets and rank. It starts as the base model (LoRA B = 0) and is frozen
        until trained inside ``with policy.adapter(name, train=True)``."""
        if name in self.model.peft_config:
            raise GfnlmError(f"The model already has an adapter named {name!r}.")
        config = copy.deepcopy(self.model.peft_config[POLICY_ADAPTER])
        with global_seed(seed):
            self.model.add_adapter(name, config)
        self.model.set_adapter(POLICY_ADAPTER)  # the policy's adapter stays the trainable, active one

    @contextmanager
    def adapter(self, name: str, train: bool = False):
        """Run (and with ``train`` train: only its weights require gradients) another adapter inside this
        block; the policy's adapter is active and trainable again afterwards."""
        self.model.set_adapter(name, inference_mode=not train)
        try:
            yield self.model
        finally:
            self.model.set_adapter(POLICY_ADAPTER)
            self.model.eval()

    def adapter_state(self, name: str = POLICY_ADAPTER) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(self.model, adapter_name=name)
        if name == POLICY_ADAPTER:
            state.update(self.temperature_state())
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def adapter_copy(self, name: str = POLICY_ADAPTER) -> dict[str, torch.Tensor]:
        """The adapter's weights, copied: unlike ``adapter_state`` (which on CPU shares the parameters'
        storage), later training does not change them; ``set_adapter_state`` puts them back."""
        return {k: v.clone() for k, v in self.adapter_state(name).items()}

    def save_adapter(self, path: Path, name: str = POLICY_ADAPTER) -> None:
        save_file(self.adapter_state(name), str(path))

    def save_peft_folder(self, folder: Path) -> None:
        """A plain peft adapter folder for other tools; a temperature embedding goes beside it
        (EMBEDDING_FILE), where ``load_adapter`` finds it again."""
        self.model.save_pretrained(folder)
        if self.temperature_embedding is not None:
            save_file({k: v.detach().cpu() for k, v in self.temperature_state().items()}, str(folder / EMBEDDING_FILE))

    def load_adapter(self, path: Path, name: str = POLICY_ADAPTER) -> None:
        state = load_file(str(path), device=str(self.device))
        beside = Path(path).parent / EMBEDDING_FILE
        if name == POLICY_ADAPTER and not any(k.startswith(EMBEDDING_PREFIX) for k in state) and beside.is_file():
            state.update(load_file(str(beside), device=str(self.device)))
        self.set_adapter_state(state, name, str(path))

    def set_adapter_state(self, state: dict[str, torch.Tensor], name: str = POLICY_ADAPTER,
                          path: str = "given state") -> None:
        state = {k: v.to(self.device) for k, v in state.items()}
        embedding = ({k[len(EMBEDDING_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(EMBEDDING_PREFIX)}
                     if name == POLICY_ADAPTER else {})
        if name == POLICY_ADAPTER and bool(embedding) != (self.temperature_embedding is not None):
            raise GfnlmError(f"The adapter {path} {'has' if embedding else 'lacks'} a temperature "
                             f"embedding and this policy {'lacks' if embedding else 'has'} one "
                             "(a run trained with(out) conditional_temperatures?).")
        if embedding:
            try:
                self.temperature_embedding.load_state_dict(embedding)
            except RuntimeError as exc:  # another hidden size, or other parameter names or shapes
                raise GfnlmError(f"The temperature embedding of {path} does not fit this policy (another model, "
                                 "or saved with other temperature parameters?).") from exc
        try:
            result = set_peft_model_state_dict(self.model, state, adapter_name=name)
        except RuntimeError as exc:  # shape mismatch: another rank or model
            raise GfnlmError(f"The adapter {path} does not fit this model (a different LoRA rank or model?).") from exc
        unexpected = getattr(result, "unexpected_keys", None) or []
        missing = [k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k and f".{name}." in k]
        if unexpected or missing:
            example = (unexpected or missing)[0]
            raise GfnlmError(f"The adapter {path} does not fit this model (e.g. {example}; other LoRA targets?).")

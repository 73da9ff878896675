"""Alice's student and EMA teacher, and the three losses of one batch (Jiang et al., ICCV 2023).

The student (backbone + head + CAFA) sees the masked crops; the teacher (backbone + head with one prototype layer
for cls and tokens, plus an EMA copy of CAFA in the paper's variant) sees the unmasked crops and never gets
gradients; it follows the student by ``teacher_p = m * teacher_p + (1 - m) * student_p`` over the parameters
both have. Both views of every pair run through each network in one batch: rows [0, B) are the query crops,
rows [B, 2B) the key crops.

Branch S of CAFA: queries = the student's encoder tokens (of the masked view), keys/values = the student's
decoder tokens, through the student's block. Branch T (the target, no gradient): queries = the teacher's encoder
tokens (default) or the student's (official code), keys/values = the teacher's encoder tokens (paper) or decoder
tokens (official code), through the EMA block (paper) or the student's block (official code). With CAFA off, the
token loss compares the student's and the teacher's decoder tokens directly. With the correspondence term (not in
Alice), the teacher's backbone also embeds the shifted crops of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alice.models.build import build_backbone, build_cafa, build_head
from alice.pretrain.config import PretrainConfig
from alice.pretrain.losses import (ClsLoss, CorrespondenceLoss, PatchLoss, TokenBank, TokenPlaces, UniformityLoss,
                                   case_code, reconstruction_loss, token_voxels)
from alice.pretrain.views import PairBatch


class Student(nn.Module):
    """Backbone, projection head and CAFA (None when CAFA is off): the module the optimiser and DDP see."""

    def __init__(self, backbone: nn.Module, head: nn.Module, cafa: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.cafa = cafa

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone outputs, head outputs and, with CAFA, branch S (``cafa_out``) and its attention."""
        out = self.backbone(images, masks)
        out.update(self.head(out["cls"], out["enc_tokens"], out["dec_tokens"]))
        if self.cafa is not None:
            out["cafa_out"], out["cafa_attn"] = self.cafa(out["enc_out"], out["dec_out"])
        return out

    def prototype_parameters(self) -> list[nn.Parameter]:
        """The prototype (last) layers' weights, frozen during the first steps."""
        return [p for name, p in self.head.named_parameters() if "last_layer" in name]


class Teacher(nn.Module):
    """Backbone, head (one shared prototype layer) and, in the paper's variant, the EMA copy of CAFA."""

    def __init__(self, backbone: nn.Module, head: nn.Module, cafa: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.cafa = cafa

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone and head outputs of unmasked crops."""
        out = self.backbone(images, None)
        out.update(self.head(out["cls"], out["enc_tokens"], out["dec_tokens"]))
        return out


class AliceSSL(nn.Module):
    """Student, teacher and the loss modules (which own the centres).

    Args:
        student: the trained network.
        teacher: the EMA network; its parameters are set from the student's here and frozen.
        cls_loss: inter-volume cls loss.
        patch_loss: intra-volume token loss.
        cls_weight: lambda1.
        patch_weight: lambda2.
        rec_weight: lambda3.
        rec_masked_only: reconstruction MSE over masked voxels only.
        kv_source: ``teacher_encoder`` or ``teacher_decoder``: keys/values of CAFA's branch T.
        target_queries: ``teacher`` or ``student``: whose encoder tokens are the queries of branch T.
        uniformity: the uniformity term on the cls embeddings, or None (the paper).
        uniformity_weight: its weight.
        correspondence: the token-level correspondence loss, or None (the paper).
        correspondence_weight: its weight.
    """

    def __init__(self, student: Student, teacher: Teacher, cls_loss: ClsLoss, patch_loss: PatchLoss,
                 cls_weight: float, patch_weight: float, rec_weight: float, rec_masked_only: bool, kv_source: str,
                 target_queries: str, uniformity: UniformityLoss | None = None, uniformity_weight: float = 0.0,
                 correspondence: CorrespondenceLoss | None = None, correspondence_weight: float = 0.0):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.cls_loss = cls_loss
        self.patch_loss = patch_loss
        self.uniformity = uniformity  # registered only when used, so other checkpoints keep their keys
        self.correspondence = correspondence
        self.weights = {"cls": cls_weight, "patch": patch_weight, "rec": rec_weight, "uniformity": uniformity_weight,
                        "correspondence": correspondence_weight}
        self.rec_masked_only = rec_masked_only
        self.kv_source = kv_source
        self.target_queries = target_queries
        self.teacher.requires_grad_(False)
        self.update_teacher(0.0)
        self.teacher.eval()

    def train(self, mode: bool = True) -> AliceSSL:
        """Set the student's mode; the teacher stays in eval mode (no drop-path, no dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def compute_losses(self, batch: PairBatch, teacher_temp: float,
                       student: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The losses of one batch of pairs, and what the app shows of it.

        Args:
            batch: B pairs, crops and masks (and shifted crops when the correspondence term is on).
            teacher_temp: the teacher softmax temperature of this step.
            student: the student to run (its DDP wrapper when distributed); default ``self.student``.

        Returns:
            ``loss`` (with gradient), ``loss/cls``, ``loss/patch``, ``loss/rec``, ``loss/uniformity`` and
            ``loss/correspondence`` (0 when off); ``bank_input``, per token grid the (tokens, case, voxels) the
            correspondence term's banks take in (empty without banks);
            ``cls_agreement`` (fraction of cross-view pairs whose student cls argmax is the argmax of the
            centred teacher scores of the other view, the cls target's);
            ``cls_logit_range`` (the teacher's highest minus lowest cls prototype score, mean over crops: near 0
            when every prototype ties, the collapsed state); ``student_cls_embedding``, what the uniformity queue
            follows; ``masks`` (2B, 1, R, R, R);
            ``recon`` (2B, 1, R, R, R); ``cafa_attn`` (2B, heads, N_enc, N_kv) of branch S (absent with CAFA
            off); ``teacher_cls`` and ``teacher_tokens``, the targets the centres follow; ``student_tokens``, the
            student's side of the token loss (same shape as ``teacher_tokens``). Rows [0, B) are
            the query views, [B, 2B) the key views; everything but ``loss`` is detached.
        """
        student = self.student if student is None else student
        n = batch.query.shape[0]
        images = torch.cat([batch.query, batch.key])
        masks = torch.cat([batch.query_mask, batch.key_mask])
        with torch.no_grad():
            teacher_out = self.teacher(images)
        out = student(images, masks)

        s_cls, t_cls = out["cls_out"], teacher_out["cls_out"]
        loss_cls = self.cls_loss(s_cls[:n], s_cls[n:], t_cls[:n], t_cls[n:], teacher_temp)
        if self.student.cafa is not None:
            keys = teacher_out["enc_out" if self.kv_source == "teacher_encoder" else "dec_out"]
            target_block = self.teacher.cafa if self.teacher.cafa is not None else self.student.cafa
            queries = teacher_out["enc_out"] if self.target_queries == "teacher" else out["enc_out"].detach()
            with torch.no_grad():
                target_tokens, _ = target_block(queries, keys)
            student_tokens = out["cafa_out"]
        else:
            target_tokens, student_tokens = teacher_out["dec_out"], out["dec_out"]
        loss_patch = self.patch_loss(student_tokens, target_tokens, teacher_temp)
        loss_rec = reconstruction_loss(out["recon"], images, masks if self.rec_masked_only else None)
        loss_uniformity = (self.uniformity(out["cls_embedding"]) if self.uniformity is not None
                           else loss_rec.new_zeros(()))
        loss_correspondence, bank_input = (self._correspondence_loss(batch, masks, out, teacher_out)
                                           if self.correspondence is not None else (loss_rec.new_zeros(()), {}))
        loss = (self.weights["cls"] * loss_cls + self.weights["patch"] * loss_patch
                + self.weights["rec"] * loss_rec + self.weights["uniformity"] * loss_uniformity
                + self.weights["correspondence"] * loss_correspondence)

        with torch.no_grad():
            agreement = self.cls_loss.agreement(s_cls, t_cls)
            logit_range = (t_cls.max(dim=-1).values - t_cls.min(dim=-1).values).float().mean()
        result = {"loss": loss, "loss/cls": loss_cls.detach(), "loss/patch": loss_patch.detach(),
                  "loss/rec": loss_rec.detach(), "loss/uniformity": loss_uniformity.detach(),
                  "loss/correspondence": loss_correspondence.detach(),
                  "cls_agreement": agreement, "cls_logit_range": logit_range,
                  "student_cls_embedding": out["cls_embedding"].detach(), "masks": masks,
                  "recon": out["recon"].detach(), "teacher_cls": t_cls.detach(),
                  "teacher_tokens": target_tokens.detach(), "student_tokens": student_tokens.detach(),
                  "bank_input": bank_input}
        if "cafa_attn" in out:
            result["cafa_attn"] = out["cafa_attn"].detach()
        return result

    def correspondence_grids(self) -> dict[str, tuple[int, int, int]] | None:
        """The token grids whose tokens the sampler pairs across views with SAM; None when the term is off."""
        return None if self.correspondence is None else dict(self.student.backbone.token_grid)

    def correspondence_shift(self) -> int:
        """Step of the correspondence term's crop shifts in voxels, one bottleneck cell (the sampler adds a jitter of
        up to half of it); 0 when the term is off."""
        if self.correspondence is None:
            return 0
        backbone = self.student.backbone
        return min(r // g for r, g in zip(backbone.roi, backbone.token_grid["enc_tokens"]))

    def _correspondence_loss(self, batch: PairBatch, masks: torch.Tensor, student_out: dict,
                             teacher_out: dict) -> tuple[torch.Tensor, dict]:
        """The correspondence term, averaged over the bottleneck and first-decoder token grids, and what each
        grid's bank takes in afterwards (``update_centres``): per grid, (tokens, case, voxels)."""
        if batch.shifted is None or batch.shifts is None:
            raise ValueError("the correspondence loss needs shifted crops: build the PairSampler with shift_voxels")
        with torch.no_grad():
            shifted_out = self.teacher.backbone(batch.shifted, None, tokens_only=True)
        backbone = self.student.backbone
        device = batch.shifts.device
        centres = torch.tensor([p.query_ijk for p in batch.pairs] + [p.key_ijk for p in batch.pairs], device=device)
        case = torch.tensor([case_code(p.query_case) for p in batch.pairs]
                            + [case_code(p.key_case) for p in batch.pairs], device=device)
        # Every grid puts as many tokens per view in its bank as the bottleneck has: the banks span as many steps.
        per_view = math.prod(backbone.token_grid["enc_tokens"])
        terms, bank_input = [], {}
        for key, grid in backbone.token_grid.items():
            cell = torch.tensor([r // g for r, g in zip(backbone.roi, grid)], device=device)
            masked_share = F.avg_pool3d(masks.float(), tuple(int(c) for c in cell)).flatten(1)  # per token cell
            places = TokenPlaces(case, token_voxels(centres, backbone.roi[0], tuple(grid)))  # cubic crops
            bank = self.correspondence.banks[key] if key in self.correspondence.banks else None
            partners = batch.partners[key] if batch.partners is not None else None
            terms.append(self.correspondence(student_out[key], teacher_out[key], shifted_out[key], tuple(grid),
                                             torch.round(batch.shifts / cell).long(),
                                             masked_share < 0.5, bank, places, partners))
            if bank is not None:
                keep = torch.linspace(0, math.prod(grid) - 1, per_view, device=device).long()
                bank_input[key] = (teacher_out[key][:, keep].flatten(0, 1),
                                   case.repeat_interleave(per_view), places.voxels[:, keep].flatten(0, 1))
        return torch.stack(terms).mean(), bank_input

    @torch.no_grad()
    def update_centres(self, losses: dict[str, torch.Tensor]) -> None:
        """Move both centres towards the teacher outputs of ``compute_losses`` (all-reduced when distributed), and
        push the student's cls embeddings into the uniformity queue and the teacher's tokens into the correspondence
        term's banks."""
        self.cls_loss.update_centre(losses["teacher_cls"])
        self.patch_loss.update_centre(losses["teacher_tokens"])
        if self.uniformity is not None:
            self.uniformity.update_queue(losses["student_cls_embedding"])
        for key, (tokens, case, voxels) in losses["bank_input"].items():
            self.correspondence.banks[key].push(tokens, case, voxels)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher_p = momentum * teacher_p + (1 - momentum) * student_p`` for every parameter both have."""
        student = dict(self.student.named_parameters())
        pairs = [(p, student[name]) for name, p in self.teacher.named_parameters() if name in student]
        teacher_params = [t for t, _ in pairs]
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, [s.detach() for _, s in pairs], alpha=1 - momentum)


def build_ssl_model(config: PretrainConfig) -> AliceSSL:
    """Student, teacher and losses from a config; the teacher starts as a copy of the student."""
    model, loss = config.model, config.loss
    backbone = build_backbone(model)
    head = build_head(model)
    cafa = build_cafa(model) if loss.cafa else None
    student = Student(backbone, head, cafa)
    teacher_cafa = cafa.ema_copy() if cafa is not None and loss.target_attn == "ema" else None
    teacher = Teacher(build_backbone(model), build_head(model, shared_last_layer=True), teacher_cafa)
    cls_loss = ClsLoss(model.head_out_dim, loss.student_temp, loss.centre_momentum)
    patch_loss = PatchLoss(model.head_patch_out_dim, loss.student_temp, loss.centre_momentum)
    uniformity = (UniformityLoss(model.head_bottleneck_dim, loss.uniformity_queue) if loss.uniformity_weight > 0
                  else None)
    correspondence = None
    if loss.correspondence_weight > 0:
        # One token cell of each grid is the radius within which a bank entry is the token's own place.
        dims = {"enc_tokens": model.enc_dim, "dec_tokens": model.dec_dim}
        banks = {key: TokenBank(loss.correspondence_bank, dims[key], model.roi // min(grid))
                 for key, grid in backbone.token_grid.items()} if loss.correspondence_bank else None
        correspondence = CorrespondenceLoss(loss.correspondence_temp, banks)
    return AliceSSL(student, teacher, cls_loss, patch_loss, loss.cls_weight, loss.patch_weight, loss.rec_weight,
                    loss.rec_masked_only, loss.kv_source, loss.target_queries, uniformity, loss.uniformity_weight,
                    correspondence, loss.correspondence_weight)

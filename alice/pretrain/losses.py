"""Alice's three losses (Jiang et al., ICCV 2023): DINO cross-entropy with centering and sharpening, and MSE.

- ``ClsLoss`` (inter-volume): the teacher's cls output of one view is the target of the student's cls output of
  the *other* view (query <-> key, two different patients at the same anatomy), averaged over both directions.
- ``PatchLoss`` (intra-volume): per token, the teacher-branch CAFA output T of a view is the target of the
  student-branch output S of the same view (or, with CAFA off, teacher vs student decoder tokens).
- ``reconstruction_loss``: MSE between the student's reconstruction and the unmasked crop.
- ``CorrespondenceLoss`` (not in Alice; on in ``cpu-tiny``): token-level InfoNCE across placements and patients,
  with far places of the same scan from a ``TokenBank`` of recent teacher tokens as global negatives.

Each cross-entropy is a module that owns its centre buffer (cls centre (1, out), patch centre (1, 1, P)). The
target is ``softmax((teacher - centre) / teacher_temp)``; the prediction ``log_softmax(student / student_temp)``.
Centres follow ``c = m c + (1 - m) mean(teacher)``, with the mean taken over every rank when distributed.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def distributed() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated along dim 0 (rank order) when distributed; else ``tensor``."""
    if not distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered)


class CenteredCrossEntropy(nn.Module):
    """Cross-entropy between a centred, sharpened teacher distribution and the student's, with its own centre.

    Args:
        centre_shape: shape of the centre buffer; it broadcasts against the outputs, e.g. (1, out) or (1, 1, P).
        student_temp: temperature of the student softmax.
        centre_momentum: EMA momentum of the centre update.
    """

    def __init__(self, centre_shape: tuple[int, ...], student_temp: float, centre_momentum: float):
        super().__init__()
        self.student_temp = student_temp
        self.centre_momentum = centre_momentum
        self.register_buffer("centre", torch.zeros(centre_shape))

    def cross_entropy(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Mean over all leading dimensions of ``-sum(p_teacher * log p_student)``; no gradient reaches the teacher."""
        target = F.softmax((teacher.detach().float() - self.centre) / teacher_temp, dim=-1)
        log_prediction = F.log_softmax(student.float() / self.student_temp, dim=-1)
        return -(target * log_prediction).sum(dim=-1).mean()

    @torch.no_grad()
    def update_centre(self, teacher: torch.Tensor) -> None:
        """EMA of the teacher outputs' mean over every leading dimension (and every rank)."""
        flat = teacher.detach().float().reshape(-1, teacher.shape[-1])
        total = flat.sum(dim=0)
        count = torch.tensor(float(flat.shape[0]), device=flat.device)
        if distributed():
            dist.all_reduce(total)
            dist.all_reduce(count)
        mean = (total / count).reshape(self.centre.shape)
        self.centre.mul_(self.centre_momentum).add_(mean, alpha=1 - self.centre_momentum)


class ClsLoss(CenteredCrossEntropy):
    """Inter-volume cls loss: teacher(query) vs student(key) and teacher(key) vs student(query), averaged.

    Args:
        out_dim: width of the cls prototype outputs.
        student_temp: temperature of the student softmax.
        centre_momentum: EMA momentum of the (1, out_dim) centre.
    """

    def __init__(self, out_dim: int, student_temp: float, centre_momentum: float):
        super().__init__((1, out_dim), student_temp, centre_momentum)

    def forward(self, student_query: torch.Tensor, student_key: torch.Tensor, teacher_query: torch.Tensor,
                teacher_key: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Each argument is (B, out_dim); the cross-view loss as a scalar."""
        return 0.5 * (self.cross_entropy(student_key, teacher_query, teacher_temp)
                      + self.cross_entropy(student_query, teacher_key, teacher_temp))

    @torch.no_grad()
    def agreement(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Fraction of cross-view pairs whose student argmax is the target's: the argmax of the other view's
        centred teacher scores (the centre can outweigh the spread of the raw scores).

        Args:
            student, teacher: (2B, out_dim) scores, query views in rows [0, B), key views in [B, 2B).
        """
        n = student.shape[0] // 2
        target_class = (teacher.float() - self.centre).argmax(dim=-1)
        student_class = student.argmax(dim=-1)
        return torch.cat([target_class[:n] == student_class[n:], target_class[n:] == student_class[:n]]).float().mean()


class PatchLoss(CenteredCrossEntropy):
    """Intra-volume token loss: each student token against the teacher token at the same place of the same view.

    Args:
        patch_dim: width of the token prototype outputs.
        student_temp: temperature of the student softmax.
        centre_momentum: EMA momentum of the (1, 1, patch_dim) centre.
    """

    def __init__(self, patch_dim: int, student_temp: float, centre_momentum: float):
        super().__init__((1, 1, patch_dim), student_temp, centre_momentum)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``student`` and ``teacher`` are (B, N, patch_dim), row for row the same view; the mean over tokens."""
        if student.shape != teacher.shape:
            raise ValueError(f"student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} differ")
        return self.cross_entropy(student, teacher, teacher_temp)


class UniformityLoss(nn.Module):
    """Uniformity of the student's cls embeddings (Wang and Isola, ICML 2020) against a queue of its own recent
    ones: ``log mean_j exp(-t * |z - q_j|^2)``, averaged over the batch; it falls as the embeddings spread.

    Not part of Alice. With one view pair per step, the cls branch can map every input to one unit vector at which
    all prototype scores tie: the teacher targets and the student predictions are then uniform, the cls loss sits
    at ln(out_dim) and gives no signal. This term pushes each embedding away from those of recent other crops; on
    its own it does not prevent that state, because one point that drifts across the sphere stays away from its
    own earlier positions. The queue holds the student's own (detached) embeddings: against a lagging teacher's, a
    collapsed student escapes by moving to the antipode of the teacher's single point, which stays collapsed.

    Args:
        dim: width of the embeddings (the head's bottleneck).
        queue_size: student embeddings kept (from every rank, newest first).
        t: the kernel's sharpness (2 in the paper).
    """

    def __init__(self, dim: int, queue_size: int, t: float = 2.0):
        super().__init__()
        self.t = t
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``embeddings``: (B, dim) unit vectors; the loss as a scalar (0 while the queue is empty)."""
        filled = int(self.queue_filled)
        if filled == 0:
            return embeddings.sum() * 0.0
        squared = (2 - 2 * embeddings.float() @ self.queue[:filled].T).clamp_min(0)  # unit vectors
        return (torch.logsumexp(-self.t * squared, dim=1) - math.log(filled)).mean()

    @torch.no_grad()
    def update_queue(self, embeddings: torch.Tensor) -> None:
        """Push the student's embeddings of this step (every rank's) in front of the queue."""
        new = gather_rows(embeddings.detach().float())
        size = len(self.queue)
        new = new[:size]
        self.queue.copy_(torch.cat([new, self.queue[:size - len(new)]]))
        self.queue_filled.fill_(min(size, int(self.queue_filled) + len(new)))


def grid_cells(grid: tuple[int, int, int], device: torch.device | None = None) -> torch.Tensor:
    """(N, 3) cell coordinates of a token grid in token order (C order, ``alice.models.tokens``)."""
    return torch.cartesian_prod(*(torch.arange(g, device=device) for g in grid))


def token_voxels(centres: torch.Tensor, roi: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """(V, N, 3) voxel of each token cell's centre, in its scan, for crops of ``roi`` voxels centred on ``centres``
    (V, 3) (voxel ``roi // 2`` of the crop): cell c covers voxels ``[c * s, (c + 1) * s)`` of the crop."""
    cell = torch.tensor([roi // g for g in grid], device=centres.device)
    return (centres - roi // 2)[:, None] + grid_cells(grid, centres.device) * cell + (cell - 1) / 2


def flat_cells(cells: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Token index of cell coordinates (..., 3) on ``grid``."""
    return (cells[..., 0] * grid[1] + cells[..., 1]) * grid[2] + cells[..., 2]


@dataclasses.dataclass
class TokenPlaces:
    """Where the tokens of a batch's views lie.

    Attributes:
        case: (V,) int64 id of each view's scan (``case_code``).
        voxels: (V, N, 3) float voxel of each token's cell centre in its scan.
    """

    case: torch.Tensor
    voxels: torch.Tensor


def case_code(case_id: str) -> int:
    """A non-negative integer that stands for a case id in tensors (CRC-32: the same in every process)."""
    return zlib.crc32(case_id.encode())


class TokenBank(nn.Module):
    """The teacher's tokens of recent crops, each with its scan and the voxel it covers there: the correspondence
    term's global negatives.

    Within one crop, tokens need only differ over the crop's width; against the bank, a token must also differ from
    the tokens of every other place of its scan seen lately, so tokens locate anatomy across the whole body. Only
    entries of the same scan farther than ``radius`` voxels from the token's place are negatives: a token of
    another patient may hold the same anatomy, the very match that retrieval asks for.

    Args:
        size: tokens kept (newest first, from every rank).
        dim: their width.
        radius: entries of the same scan within this many voxels of the place are not negatives (one token cell).
    """

    def __init__(self, size: int, dim: int, radius: float):
        super().__init__()
        self.radius = radius
        self.register_buffer("tokens", torch.zeros(size, dim))
        self.register_buffer("case", torch.full((size,), -1, dtype=torch.long))  # -1: an empty slot
        self.register_buffer("voxels", torch.zeros(size, 3))

    def far_scores(self, scores: torch.Tensor, case: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """Scores against the entries, -inf where the entry is not a negative of the place.

        Args:
            scores: (..., size) each query's score with each entry (its logits).
            case: (...) the scan each query's place lies in.
            voxels: (..., 3) that place.
        """
        return scores.masked_fill(~self.negatives(case, voxels), float("-inf"))

    def negatives(self, case: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        """(..., size) bool: which entries are negatives for places in scans ``case`` (...) at ``voxels`` (..., 3)."""
        far = torch.cdist(voxels.reshape(-1, 3).float(), self.voxels).reshape(*case.shape, -1) > self.radius
        return (case[..., None] == self.case) & far

    @torch.no_grad()
    def push(self, tokens: torch.Tensor, case: torch.Tensor, voxels: torch.Tensor) -> None:
        """Put (M, dim) tokens (unit-normalised here), their (M,) scans and (M, 3) voxels, every rank's, in front."""
        size = len(self.tokens)
        tokens = F.normalize(tokens.float(), dim=-1)
        new = [gather_rows(t.detach())[:size] for t in (tokens, case.long(), voxels.float())]
        for buffer, rows in zip((self.tokens, self.case, self.voxels), new):
            buffer.copy_(torch.cat([rows, buffer[:size - len(rows)]]))


class CorrespondenceLoss(nn.Module):
    """Token-level InfoNCE on the backbone tokens that dense embeddings use (not part of Alice).

    Alice's losses never ask a token to say where it is: the cls loss sees the mean token, and the token loss
    compares each token with the teacher's token at the same place of the same crop. In a model trained with them
    alone, the tokens of one place in two crops 16 voxels apart were hardly more alike than tokens of other places,
    and landmark retrieval with them was at chance (README). Two terms ask for what retrieval needs, per token
    grid (bottleneck and first decoder stage), on unit-normalised tokens, each a softmax over one crop's tokens
    and, with a ``TokenBank``, the far places of the positive's scan held in the bank:

    - placement: every student token of a view whose cell the mask left visible, against the teacher's tokens of
      the same scan cropped at a shifted centre; its positive is the token covering most of the same voxels.
      Tokens of one crop must then differ from place to place, and a place must give the same token wherever the
      window falls. (A masked cell shows the student nothing to place.)
    - cross-patient: the student token that holds the crop centre of one view against the teacher's tokens of
      the *other* view of the pair; its positive is that view's centre token. Alice's premise, at the token level:
      SAM matched the two centres as the same anatomy in two patients. With SAM partners (``sam`` views), every
      visible token that SAM pairs with a token of the other view takes part the same way.

    Args:
        temperature: InfoNCE temperature.
        banks: a ``TokenBank`` per token grid (``enc_tokens``, ``dec_tokens``), or None: no global negatives.
    """

    def __init__(self, temperature: float, banks: dict[str, TokenBank] | None = None):
        super().__init__()
        self.temperature = temperature
        self.banks = nn.ModuleDict(banks or {})

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_shifted: torch.Tensor,
                grid: tuple[int, int, int], shift_cells: torch.Tensor, visible: torch.Tensor | None = None,
                bank: TokenBank | None = None, places: TokenPlaces | None = None,
                partners: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the two terms on one token grid.

        Args:
            student: (2B, N, C) student tokens of the (masked) views; rows [0, B) query views, [B, 2B) key views.
            teacher: (2B, N, C) teacher tokens of the same views, unmasked.
            teacher_shifted: (2B, N, C) teacher tokens of each view's scan cropped at the shifted centre.
            grid: the (X, Y, Z) token grid, N = X * Y * Z.
            shift_cells: (2B, 3) shift of each shifted crop's centre in cells of ``grid``, rounded: the positive is
                the token that covers most of the same voxels.
            visible: (2B, N) bool, the student tokens whose cells are mostly unmasked; None = all.
            bank: global negatives for this grid's tokens, or None; needs ``places``.
            places: the scan and voxel of every token of the views.
            partners: (2B, N) int64 token of the other view that SAM pairs each token with, -1 where none
                (``alice.pretrain.views.sam_partners``); None: the centres only.
        """
        views = student.shape[0]
        student = F.normalize(student.float(), dim=-1)
        teacher = F.normalize(teacher.detach().float(), dim=-1)
        teacher_shifted = F.normalize(teacher_shifted.detach().float(), dim=-1)

        # Placement: cell c of a crop is cell c - shift of the crop whose centre moved by shift.
        cells = grid_cells(grid, student.device)
        shifted_cells = cells[None] - shift_cells[:, None].to(cells.device)
        inside = ((shifted_cells >= 0) & (shifted_cells < torch.tensor(grid, device=cells.device))).all(dim=-1)
        if visible is not None:
            inside &= visible
        logits = student @ teacher_shifted.transpose(1, 2) / self.temperature
        if bank is not None:  # scored once; each part masks the entries that are not its negatives
            bank_scores = student @ bank.tokens.T / self.temperature
            # Placement: a token's place is also the place of its positive.
            case = places.case[:, None].expand(-1, logits.shape[1])
            logits = torch.cat([logits, bank.far_scores(bank_scores, case, places.voxels)], dim=-1)
        # A masked crop can leave no visible token inside the shifted crop: the term is then 0 for this batch.
        placement = (F.cross_entropy(logits[inside], flat_cells(shifted_cells, grid)[inside]) if inside.any()
                     else logits[..., 0].sum() * 0.0)

        # Cross-patient: the crop centres (voxel roi // 2) of the two views of a pair are the matched anatomy, and
        # so are the tokens SAM pairs across the two views (visible ones: a masked cell shows nothing to match).
        centre = int(flat_cells(torch.tensor([g // 2 for g in grid]), grid))
        if partners is None:
            partners = torch.full(student.shape[:2], -1, dtype=torch.long, device=student.device)
        partners = partners.clone()
        partners[:, centre] = centre
        matched = partners >= 0
        if visible is not None:
            matched &= visible
        matched[:, centre] = True
        other_view = torch.arange(views, device=student.device).roll(views // 2)
        cross_logits = student @ teacher[other_view].transpose(1, 2) / self.temperature
        if bank is not None:  # the positive is the partner token, in the other view's scan
            partner_voxels = places.voxels[other_view].gather(1, partners.clamp_min(0)[..., None].expand(-1, -1, 3))
            case = places.case[other_view][:, None].expand(-1, cross_logits.shape[1])
            cross_logits = torch.cat([cross_logits, bank.far_scores(bank_scores, case, partner_voxels)], dim=-1)
        return 0.5 * (placement + F.cross_entropy(cross_logits[matched], partners[matched]))


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all voxels, or over the masked voxels only when ``mask`` is given.

    Args:
        reconstruction: (B, 1, X, Y, Z) student output.
        target: (B, 1, X, Y, Z) unmasked crop in [0, 1].
        mask: (B, 1, X, Y, Z) bool, True where the student's input was zeroed.
    """
    error = (reconstruction.float() - target.float()) ** 2
    if mask is None:
        return error.mean()
    weight = mask.to(error.dtype)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)

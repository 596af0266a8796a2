"""Loss functions for speaker-embedding training, each a plain ``torch.nn.Module``.

All of them compute their similarity, softmax and log-sum-exp parts in float32 (autocast is turned
off inside), so they are safe to call under bf16/fp16 autocast.
"""

from spkemb.losses.aam import AAMOutput, AAMSoftmax, MarginScheduler, add_angular_margin
from spkemb.losses.angular_prototypical import AngularPrototypical
from spkemb.losses.cel import CELoss
from spkemb.losses.dino import DINOHead, DINOLoss
from spkemb.losses.infonce import InfoNCE, NTXent
from spkemb.losses.subcenter import SubCenterAAM, dominant_subcenter_keep
from spkemb.losses.supcon_aam import AAMPlusSupCon, SupConAAM
from spkemb.losses.uniformity import Uniformity

__all__ = [
    "AAMOutput",
    "AAMPlusSupCon",
    "AAMSoftmax",
    "AngularPrototypical",
    "CELoss",
    "DINOHead",
    "DINOLoss",
    "InfoNCE",
    "MarginScheduler",
    "NTXent",
    "SubCenterAAM",
    "SupConAAM",
    "Uniformity",
    "add_angular_margin",
    "dominant_subcenter_keep",
]

"""The model matrix: a catalog of real models, validate runs over it, a ledger and a report.

python -m zmlx.matrix catalog        # the models (zmlx.matrix.models.CATALOG)
python -m zmlx.matrix run            # validate what is available here, append to the ledger
python -m zmlx.matrix report         # heatmap PNG + markdown table of the ledger
"""

from .models import CATALOG, PATTERNS, ModelEntry, by_name, entries

__all__ = ["CATALOG", "PATTERNS", "ModelEntry", "by_name", "entries"]

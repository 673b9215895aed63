"""On Milvus, which version's collections the live aliases name (index.milvus_admin), and a
removed version's collections dropped. Nothing to do on FAISS (each version's files)."""

from index.milvus_admin import connected, drop_index, point_live_aliases
from service.items.search_index import milvus_token, milvus_uri
from service.settings import Settings
from service.versions.records import version_settings
from service.versions.registry import VersionRecord


def publish_live(settings: Settings, record: VersionRecord) -> None:
    """Point `{prefix}_live_items` and `_images` at this version's collections (atomic in
    Milvus: a reader of the alias sees one version or the other)."""
    if settings.index_engine != "milvus":
        return
    own = version_settings(settings, record).milvus_collection_prefix
    with connected(milvus_uri(settings), milvus_token(settings)) as client:
        point_live_aliases(client, settings.milvus_collection_prefix, own)


def drop_version_collections(settings: Settings, record: VersionRecord) -> None:
    if settings.index_engine != "milvus":
        return
    with connected(milvus_uri(settings), milvus_token(settings)) as client:
        drop_index(client, version_settings(settings, record).milvus_collection_prefix)

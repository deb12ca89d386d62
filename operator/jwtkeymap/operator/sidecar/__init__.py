"""The resolver sidecar: what to add to a pod (``plan``), from which settings (``defaults``).

Two callers apply the same plan: the mutating admission webhook (``webhook``)
for pods created in a cluster, and ``jwtkeymap inject`` (``render``) for
manifests on disk, so what a reviewer sees offline is what the cluster does.
"""

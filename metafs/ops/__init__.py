"""Running metafs for a team: TLS and authentication, certificates, metrics, quotas,
fsck, backup and restore, folder sync and bulk copies."""

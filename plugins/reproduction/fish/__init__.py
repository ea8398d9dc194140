"""Fish's experiments: CdSprites-N (``cdsprites``), the WILDS protocol (``wilds``) and DomainBed's
sweep (``domainbed``)."""

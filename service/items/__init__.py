"""Items and the similarity index as the service sees them: the async index seam, item ids,
bulk upload and vector import."""

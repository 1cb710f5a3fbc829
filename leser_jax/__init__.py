"""leser-jax: LESER (arXiv 2509.05570) in JAX: query expansion learned with search-engine rewards."""

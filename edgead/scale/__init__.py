"""Scale-out on Ray: bulk scoring with Ray Data (``ray_data``) and the service on Ray Serve (``ray_serve``).

Nothing here is imported by the base or line-side installs; Ray comes with ``pip install 'edgead[ray]'``.
"""

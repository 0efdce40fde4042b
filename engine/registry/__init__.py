"""Registry client: the distribution API over httpx with authentication, credentials, retries and resume.

``RegistryClient`` is the entry point; ``CredentialStore``/``Credentials`` hold what ``login`` stores.
"""

from engine.registry.client import RegistryClient
from engine.registry.credentials import Credentials, CredentialStore

__all__ = ["CredentialStore", "Credentials", "RegistryClient"]

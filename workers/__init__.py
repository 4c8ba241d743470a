"""Everything that touches a lab: node drivers, NFS servers, node images, node sessions."""

"""CloudService: this cloud's name and regions."""

from __future__ import annotations

import grpc

import cbr
from cbr import tls
from cbr.v1 import cloud_pb2, cloud_pb2_grpc
from controller.api.base import Servicer


class CloudServicer(Servicer, cloud_pb2_grpc.CloudServiceServicer):
    def GetCloud(self, request: cloud_pb2.GetCloudRequest,
                 context: grpc.ServicerContext) -> cloud_pb2.GetCloudResponse:
        cfg = self.app.config
        ca_pem = self.app.api_ca_pem
        return cloud_pb2.GetCloudResponse(cloud=cloud_pb2.Cloud(
            name=cfg.cloud_name, region=cfg.region, version=cbr.__version__,
            ca_sha256=tls.fingerprint(ca_pem) if ca_pem else "",
            regions=[cloud_pb2.Region(id=r, replication_supported=ok)
                     for r, ok in cfg.all_regions]))

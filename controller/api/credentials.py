"""CredentialService: thin translation to controller.services.credentials."""

from __future__ import annotations

from typing import cast

import grpc

from cbr import errors
from cbr.v1 import credential_pb2, credential_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer, calls_other_clouds
from controller.jobs.replicator import Replicator, pin_target_ca
from controller.services import credentials


class CredentialServicer(Servicer, credential_pb2_grpc.CredentialServiceServicer):
    """Creating or changing a credential asks the target cloud whether it works
    (controller.jobs.replicator.Replicator.check_access) before anything is stored."""

    def _replicator(self) -> Replicator:
        if self.app.replicator is None:
            raise errors.NotImplementedYet("This controller runs without replication.")
        return cast(Replicator, self.app.replicator)

    @calls_other_clouds
    def CreateCredential(self, request: credential_pb2.CreateCredentialRequest,
                         context: grpc.ServicerContext
                         ) -> credential_pb2.CreateCredentialResponse:
        if not request.target_endpoint:
            raise errors.InvalidParameter("target_endpoint is required: HOST:PORT of the "
                                          "target cloud's controller.", field="target_endpoint")
        with self.app.db.read() as conn:  # refuse bad input before calling another cloud
            credentials.check_new(conn, self.project_id, request.name)
        ca_pem = pin_target_ca(self.app, request.target_endpoint,
                               request.target_ca_certificate, request.target_ca_sha256)
        self._replicator().check_access(
            name=request.name, endpoint=request.target_endpoint, ca_pem=ca_pem,
            access_key_id=request.access_key_id, secret=request.secret_access_key,
            target_account_id=request.target_account_id, target_cloud=request.target_cloud)
        with self.app.db.begin() as s:
            c = credentials.create_credential(
                s, self.app.keyring, self.project_id, name=request.name,
                description=request.description, target_cloud=request.target_cloud,
                target_endpoint=request.target_endpoint,
                target_account_id=request.target_account_id,
                access_key_id=request.access_key_id,
                secret_access_key=request.secret_access_key, target_ca_pem=ca_pem,
                now=self.now())
            return credential_pb2.CreateCredentialResponse(credential=convert.credential(c))

    def GetCredential(self, request: credential_pb2.GetCredentialRequest,
                      context: grpc.ServicerContext) -> credential_pb2.GetCredentialResponse:
        with self.app.db.begin() as s:
            c = credentials.get_credential(s, self.project_id, request.credential_id)
            return credential_pb2.GetCredentialResponse(credential=convert.credential(c))

    def ListCredentials(self, request: credential_pb2.ListCredentialsRequest,
                        context: grpc.ServicerContext
                        ) -> credential_pb2.ListCredentialsResponse:
        with self.app.db.begin() as s:
            items, token, total = credentials.list_credentials(
                s, self.project_id, request.target_cloud, request.page_size,
                request.page_token)
            return credential_pb2.ListCredentialsResponse(
                credentials=[convert.credential(c) for c in items], next_page_token=token,
                total_count=total)

    @calls_other_clouds
    def UpdateCredential(self, request: credential_pb2.UpdateCredentialRequest,
                         context: grpc.ServicerContext
                         ) -> credential_pb2.UpdateCredentialResponse:
        ca_pem = ""
        if request.target_endpoint or request.access_key_id or request.secret_access_key \
                or request.target_ca_certificate or request.target_ca_sha256:
            with self.app.db.begin() as s:
                check = credentials.access_check(
                    s, self.app.keyring, self.project_id, request.credential_id,
                    target_endpoint=request.target_endpoint,
                    access_key_id=request.access_key_id,
                    secret_access_key=request.secret_access_key)
            if request.target_ca_certificate or request.target_ca_sha256:
                ca_pem = pin_target_ca(self.app, check.endpoint,
                                       request.target_ca_certificate, request.target_ca_sha256)
            self._replicator().check_access(
                name=check.name, endpoint=check.endpoint, ca_pem=ca_pem or check.current_ca_pem,
                access_key_id=check.access_key_id, secret=check.secret,
                target_account_id=check.target_account_id, target_cloud=check.target_cloud)
        with self.app.db.begin() as s:
            c = credentials.update_credential(
                s, self.app.keyring, self.project_id, request.credential_id,
                name=request.name, description=request.description,
                target_endpoint=request.target_endpoint, access_key_id=request.access_key_id,
                secret_access_key=request.secret_access_key,
                target_cloud=request.target_cloud, target_account_id=request.target_account_id,
                now=self.now(), target_ca_pem=ca_pem)
            return credential_pb2.UpdateCredentialResponse(credential=convert.credential(c))

    @calls_other_clouds
    def ListReplicationDestinations(
            self, request: credential_pb2.ListReplicationDestinationsRequest,
            context: grpc.ServicerContext) -> credential_pb2.ListReplicationDestinationsResponse:
        with self.app.db.begin() as s:
            check = credentials.access_check(s, self.app.keyring, self.project_id,
                                             request.credential_id)
        answer = self._replicator().check_access(
            name=check.name, endpoint=check.endpoint, ca_pem=check.current_ca_pem,
            access_key_id=check.access_key_id, secret=check.secret,
            target_account_id=check.target_account_id, target_cloud=check.target_cloud)
        return credential_pb2.ListReplicationDestinationsResponse(
            target_cloud=answer.cloud, target_account_id=answer.account_id,
            regions=answer.regions, vaults=answer.vaults)

    def DeleteCredential(self, request: credential_pb2.DeleteCredentialRequest,
                         context: grpc.ServicerContext
                         ) -> credential_pb2.DeleteCredentialResponse:
        with self.app.db.begin() as s:
            credentials.delete_credential(s, self.project_id, request.credential_id)
        return credential_pb2.DeleteCredentialResponse()

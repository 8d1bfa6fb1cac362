"""IamService: thin translation to controller.services.iam."""

from __future__ import annotations

import grpc

from cbr.v1 import iam_pb2, iam_pb2_grpc
from controller.api import convert
from controller.api.base import Servicer
from controller.services import iam


class IamServicer(Servicer, iam_pb2_grpc.IamServiceServicer):
    def GetCallerIdentity(self, request: iam_pb2.GetCallerIdentityRequest,
                          context: grpc.ServicerContext) -> iam_pb2.GetCallerIdentityResponse:
        caller = self.caller
        with self.app.db.begin() as s:
            account, user = iam.caller_identity(s, caller)
            return iam_pb2.GetCallerIdentityResponse(
                account=convert.account(account), user=convert.user(user),
                access_key_id=caller.access_key_id, actions=iam.caller_actions(caller))

    def CreateAccount(self, request: iam_pb2.CreateAccountRequest,
                      context: grpc.ServicerContext) -> iam_pb2.CreateAccountResponse:
        iam.require_administrator(self.caller, "create accounts", "iam:accounts:create")
        with self.app.db.begin() as s:
            account, user, key, sk = iam.create_account(
                s, self.app.keyring, request.name, request.admin_user_name, self.now(),
                vault_quota_gb=request.vault_quota_gb)
            return iam_pb2.CreateAccountResponse(
                account=convert.account(account),
                user=convert.user(user) if user else None,
                access_key=convert.access_key(key, sk) if key else None)

    def GetAccount(self, request: iam_pb2.GetAccountRequest,
                   context: grpc.ServicerContext) -> iam_pb2.GetAccountResponse:
        with self.app.db.begin() as s:
            return iam_pb2.GetAccountResponse(account=convert.account(
                iam.get_account(s, self.caller, request.account_id)))

    def UpdateAccount(self, request: iam_pb2.UpdateAccountRequest,
                      context: grpc.ServicerContext) -> iam_pb2.UpdateAccountResponse:
        with self.app.db.begin() as s:
            return iam_pb2.UpdateAccountResponse(account=convert.account(
                iam.update_account(s, self.caller, request.account_id,
                                   request.vault_quota_gb)))

    def ListAccounts(self, request: iam_pb2.ListAccountsRequest,
                     context: grpc.ServicerContext) -> iam_pb2.ListAccountsResponse:
        with self.app.db.begin() as s:
            items, token, total = iam.list_accounts(s, self.caller, request.page_size,
                                                    request.page_token)
            return iam_pb2.ListAccountsResponse(accounts=[convert.account(a) for a in items],
                                                next_page_token=token, total_count=total)

    def CreateUser(self, request: iam_pb2.CreateUserRequest,
                   context: grpc.ServicerContext) -> iam_pb2.CreateUserResponse:
        with self.app.db.begin() as s:
            user = iam.create_user(s, self.caller.account_id, request.name, self.now())
            return iam_pb2.CreateUserResponse(user=convert.user(user))

    def GetUser(self, request: iam_pb2.GetUserRequest,
                context: grpc.ServicerContext) -> iam_pb2.GetUserResponse:
        with self.app.db.begin() as s:
            return iam_pb2.GetUserResponse(user=convert.user(
                iam.get_user(s, self.caller.account_id, request.user_id)))

    def ListUsers(self, request: iam_pb2.ListUsersRequest,
                  context: grpc.ServicerContext) -> iam_pb2.ListUsersResponse:
        with self.app.db.begin() as s:
            items, token, total = iam.list_users(s, self.caller.account_id, request.page_size,
                                                 request.page_token)
            return iam_pb2.ListUsersResponse(users=[convert.user(u) for u in items],
                                             next_page_token=token, total_count=total)

    def DeleteUser(self, request: iam_pb2.DeleteUserRequest,
                   context: grpc.ServicerContext) -> iam_pb2.DeleteUserResponse:
        with self.app.db.begin() as s:
            iam.delete_user(s, self.caller, request.user_id)
        iam.access_key_cache(self.app).clear()
        return iam_pb2.DeleteUserResponse()

    def SetUserPassword(self, request: iam_pb2.SetUserPasswordRequest,
                        context: grpc.ServicerContext) -> iam_pb2.SetUserPasswordResponse:
        with self.app.db.begin() as s:
            user = iam.set_password(s, self.caller, request.user_id, request.password)
            return iam_pb2.SetUserPasswordResponse(user=convert.user(user))

    def CreateAccessKey(self, request: iam_pb2.CreateAccessKeyRequest,
                        context: grpc.ServicerContext) -> iam_pb2.CreateAccessKeyResponse:
        with self.app.db.begin() as s:
            user = iam.get_user(s, self.caller.account_id,
                                request.user_id or self.caller.user_id)
            key, sk = iam.create_access_key(s, self.app.keyring, user, self.now())
            return iam_pb2.CreateAccessKeyResponse(access_key=convert.access_key(key, sk))

    def ListAccessKeys(self, request: iam_pb2.ListAccessKeysRequest,
                       context: grpc.ServicerContext) -> iam_pb2.ListAccessKeysResponse:
        with self.app.db.begin() as s:
            keys = iam.list_access_keys(s, self.caller.account_id,
                                        request.user_id or self.caller.user_id)
            return iam_pb2.ListAccessKeysResponse(
                access_keys=[convert.access_key(k) for k in keys])

    def DeleteAccessKey(self, request: iam_pb2.DeleteAccessKeyRequest,
                        context: grpc.ServicerContext) -> iam_pb2.DeleteAccessKeyResponse:
        with self.app.db.begin() as s:
            iam.delete_access_key(s, self.caller, request.access_key_id)
        iam.access_key_cache(self.app).clear()
        return iam_pb2.DeleteAccessKeyResponse()

    def CreateGrant(self, request: iam_pb2.CreateGrantRequest,
                    context: grpc.ServicerContext) -> iam_pb2.CreateGrantResponse:
        with self.app.db.begin() as s:
            grant = iam.create_grant(s, self.caller.account_id, request.user_id,
                                     request.action, self.now())
            response = iam_pb2.CreateGrantResponse(grant=convert.grant(grant))
        iam.access_key_cache(self.app).clear()
        return response

    def ListGrants(self, request: iam_pb2.ListGrantsRequest,
                   context: grpc.ServicerContext) -> iam_pb2.ListGrantsResponse:
        with self.app.db.begin() as s:
            grants = iam.list_grants(s, self.caller.account_id,
                                     request.user_id or self.caller.user_id)
            return iam_pb2.ListGrantsResponse(grants=[convert.grant(g) for g in grants])

    def DeleteGrant(self, request: iam_pb2.DeleteGrantRequest,
                    context: grpc.ServicerContext) -> iam_pb2.DeleteGrantResponse:
        with self.app.db.begin() as s:
            iam.delete_grant(s, self.caller.account_id, request.grant_id)
        iam.access_key_cache(self.app).clear()
        return iam_pb2.DeleteGrantResponse()

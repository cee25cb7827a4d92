// The Flex Consumption function app and its settings. Every connection is identity-based: the
// user-assigned identity signs in to Storage, Service Bus and Application Insights; no setting
// holds a key or a connection string with a secret.

param name string
param location string
param tags object
param planResourceId string
param identityResourceId string
param identityClientId string

@description('primaryEndpoints of the storage account (blob, queue, table, ...; each ends with "/").')
param storageEndpoints object
param deploymentContainerName string
param journalTableName string
param appInsightsConnectionString string
param serviceBusNamespaceName string
param outcomeQueueName string
param maxDeliveryCount int
param pythonVersion string
param maximumInstanceCount int
param maxConcurrentCalls int
param alwaysReadyInstances int
param serviceBusFunctionNames array
param onboardingTenantId string
param policyFile string
param intakeQueueNames array
param leaseNoticeSeconds int

@description('The app\'s tuning settings (welcome message, retries, cache, Exchange concurrency), by app setting name: infra/main.bicep.')
param tuningSettings object

// The trigger bindings' connection name (SERVICEBUS_CONNECTION in shared/settings.py) must prefix
// the ServiceBusConnection__* settings below; tests/infra/test_function_bindings.py checks both.
var appSettings = {
  // Host storage (AzureWebJobsStorage) through the identity, one endpoint per storage service.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storageEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: storageEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: storageEndpoints.table
  // The Service Bus triggers' connection (public cloud host name, as in the Azure samples).
  ServiceBusConnection__fullyQualifiedNamespace: '${serviceBusNamespaceName}.servicebus.windows.net'
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  // Application Insights with local auth off: the host and the app's exporter sign in as the identity.
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // host.json's extensions.serviceBus.maxConcurrentCalls, overridden here so scale is set per deployment.
  AzureFunctionsJobHost__extensions__serviceBus__maxConcurrentCalls: string(maxConcurrentCalls)
  // The app's own settings (docs/settings.md). ONBOARDING_TENANT_DOMAIN is not among them: the app reads none.
  ONBOARDING_TENANT_ID: onboardingTenantId
  ONBOARDING_DIRECTORY_CREDENTIAL: 'managed-identity'
  ONBOARDING_MANAGED_IDENTITY_CLIENT_ID: identityClientId
  ONBOARDING_JOURNAL: '${storageEndpoints.table}${journalTableName}'
  ONBOARDING_OUTCOME_QUEUE: outcomeQueueName
  ONBOARDING_SERVICEBUS_MAX_DELIVERY_COUNT: string(maxDeliveryCount)
  ONBOARDING_LEASE_NOTICE_SECONDS: string(leaseNoticeSeconds)
}

// An empty ONBOARDING_POLICY_FILE would be read as the path "." and fail; leave the setting out instead.
var policySetting = empty(policyFile) ? {} : {
  ONBOARDING_POLICY_FILE: policyFile
}

// A source's own intake queues, each with a create-contact trigger (shared/queues.py, intake_queues).
var intakeSetting = empty(intakeQueueNames) ? {} : {
  ONBOARDING_INTAKE_QUEUES: join(intakeQueueNames, ',')
}

// siteConfig.appSettings takes a list of name/value pairs.
var siteAppSettings = [for setting in items(union(appSettings, tuningSettings, policySetting, intakeSetting)): {
  name: setting.key
  value: setting.value
}]

var alwaysReady = [for functionName in serviceBusFunctionNames: {
  name: 'function:${functionName}'
  instanceCount: alwaysReadyInstances
}]

module site 'br/public:avm/res/web/site:0.19.3' = {
  name: 'site'
  params: {
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': 'onboarding' })
    kind: 'functionapp,linux'
    serverFarmResourceId: planResourceId
    managedIdentities: {
      userAssignedResourceIds: [
        identityResourceId
      ]
    }
    httpsOnly: true
    clientAffinityEnabled: false
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityResourceId
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
      scaleAndConcurrency: {
        instanceMemoryMB: 2048
        maximumInstanceCount: maximumInstanceCount
        alwaysReady: (alwaysReadyInstances > 0) ? alwaysReady : []
      }
    }
    // Flex Consumption refuses many App Service site properties; like the Azure samples, set only
    // alwaysOn and the app settings.
    siteConfig: {
      alwaysOn: false
      appSettings: siteAppSettings
    }
  }
}

output name string = site.outputs.name
